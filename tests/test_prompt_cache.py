"""The embedded server's prompt cache: OpenAI's automatic rule and Anthropic's breakpoints, and
chat completions reporting ``prompt_tokens_details.cached_tokens``, realtime and in batch lines."""

from __future__ import annotations

import io
import json
from typing import Any

import openai

from adapters.server.backends import SimBackend, SimSettings
from adapters.server.embedded import embedded_server
from adapters.server.prompt_cache import CACHE_STEP_TOKENS, MIN_CACHED_TOKENS, PromptCache, chat_segments
from tests.test_server_batches import settle

SHARED = "Grade the answer against the rubric. " * 200  # ~1,900 tokens at the sim's four characters a token


def test_automatic_reads_the_longest_prefix_seen_in_steps_of_128() -> None:
    cache = PromptCache()
    first = ["a" * 8000, "row one " * 100]
    second = ["a" * 8000, "row two " * 100]
    tokens = 2200
    assert cache.automatic(first, tokens).read == 0  # nothing seen yet
    read = cache.automatic(second, tokens).read
    # The shared part is 8,000 of 8,800 characters: 2,000 tokens; the longest 128-token step
    # at or under it, from 1,024, is 1,024 + 7 * 128 = 1,920.
    shared_tokens = tokens * 8000 / 8800
    expected = max(t for t in range(MIN_CACHED_TOKENS, tokens + 1, CACHE_STEP_TOKENS) if t <= shared_tokens)
    assert read == expected == 1920
    assert cache.automatic(second, tokens).read == 2176  # the same prompt again: all of it, to the last step


def test_prompts_of_different_lengths_share_their_common_prefix() -> None:
    cache = PromptCache()
    shared = "s" * 6000  # 1,500 tokens at four characters a token
    cache.automatic([shared, "a short question"], (6000 + 16) // 4)
    longer = [shared, "a much longer question, " * 40]
    read = cache.automatic(longer, (6000 + 960) // 4).read
    assert read == 1024 + (1500 - 1024) // 128 * 128 == 1408


def test_automatic_caches_nothing_under_1024_tokens() -> None:
    cache = PromptCache()
    for _ in range(3):
        assert cache.automatic(["short prompt"], MIN_CACHED_TOKENS - 1).read == 0


def test_explicit_writes_then_reads_at_the_breakpoint() -> None:
    cache = PromptCache()
    segments = [("s" * 8000, True), ("question one", False)]
    tokens = 2003
    first = cache.explicit(segments, tokens)
    assert first.read == 0 and first.written == round(8000 * tokens / 8012)
    second = cache.explicit([("s" * 8000, True), ("question two", False)], tokens)
    assert second.read == first.written and second.written == 0
    unmarked = PromptCache().explicit([("s" * 8000, False), ("question", False)], tokens)
    assert unmarked.read == unmarked.written == 0  # no breakpoint, no caching


def test_the_least_recently_used_prefix_goes_first() -> None:
    cache = PromptCache(capacity=1)
    cache.explicit([("a" * 5000, True)], 1250)
    cache.explicit([("b" * 5000, True)], 1250)
    assert cache.explicit([("a" * 5000, True)], 1250).read == 0


def messages(row: str) -> list[dict[str, Any]]:
    return [{"role": "system", "content": SHARED}, {"role": "user", "content": f"Answer: {row}"}]


async def test_chat_completions_report_cached_tokens_over_http() -> None:
    async with embedded_server(SimBackend(SimSettings(seed=3))) as url:
        async with openai.AsyncOpenAI(base_url=url, api_key="k", max_retries=0) as client:
            first = await client.chat.completions.create(model="m", messages=messages("one"), max_tokens=4)  # type: ignore[arg-type]
            second = await client.chat.completions.create(model="m", messages=messages("two"), max_tokens=4)  # type: ignore[arg-type]
            short = await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=4
            )
    assert first.usage and second.usage and short.usage
    assert first.usage.prompt_tokens_details and first.usage.prompt_tokens_details.cached_tokens == 0
    expected = PromptCache()
    expected.automatic(chat_segments(messages("one")), first.usage.prompt_tokens)
    cached = expected.automatic(chat_segments(messages("two")), second.usage.prompt_tokens).read
    assert second.usage.prompt_tokens_details and second.usage.prompt_tokens_details.cached_tokens == cached
    assert MIN_CACHED_TOKENS <= cached < second.usage.prompt_tokens and cached % CACHE_STEP_TOKENS == 0
    assert short.usage.prompt_tokens_details and short.usage.prompt_tokens_details.cached_tokens == 0


async def test_batch_lines_report_cached_tokens() -> None:
    lines = [
        {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "m", "messages": messages(f"row {i}"), "max_tokens": 4}}
        for i in range(3)
    ]
    payload = "".join(json.dumps(line) + "\n" for line in lines).encode()
    async with embedded_server(SimBackend(SimSettings(seed=3))) as url:
        async with openai.AsyncOpenAI(base_url=url, api_key="k", max_retries=0) as client:
            uploaded = await client.files.create(file=("in.jsonl", io.BytesIO(payload)), purpose="batch")
            batch = await client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                                completion_window="24h")
            batch = await settle(client, batch.id)
            assert batch.output_file_id
            output = (await client.files.content(batch.output_file_id)).text
    usages = [json.loads(line)["response"]["body"]["usage"] for line in output.splitlines()]
    cached = sorted(usage["prompt_tokens_details"]["cached_tokens"] for usage in usages)
    assert cached[0] == 0  # the first line the server ran found nothing cached
    assert all(MIN_CACHED_TOKENS <= value < usages[0]["prompt_tokens"] for value in cached[1:])
