"""``AnthropicProvider`` over loopback HTTP against the embedded server's Messages API and Message
Batches, with the real ``anthropic`` SDK underneath: realtime calls (on asyncio over aiohttp, on
trio through the SDK), structured answers, prompt-cache usage, every error's retry kind, a whole
batch round trip, a batch found again after its create reply was lost, and cancellation."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import anyio
import pytest

from adapters.anthropic import AnthropicProvider
from adapters.anthropic.messages_format import MAX_BATCH_REQUESTS
from adapters.anthropic.provider import _rate_limits, sdk_base_url
from adapters.server.backends import SimBackend, SimSettings
from adapters.server.backends.base import BackendError, BackendReply
from adapters.server.batch_jobs import BatchSettings
from adapters.server.embedded import EmbeddedServer
from benchmarks.clocks import InstantClock
from benchmarks.proxy import FaultProxy
from engine.config import BatchConfig
from engine.errors import AuthError, BatchApiMissingError, FatalError, ModelNotFoundError, ProviderError
from engine.formats import choice_format
from engine.journal import EventLog
from engine.provider import BatchJob, ChatReply, RateLimits
from engine.run.batch_stage import BatchStage
from engine.run.limits import Limiter
from engine.run.realtime import RealtimeRunner
from engine.run.retry import RetryPolicy
from engine.rundir import RunDir
from engine.types import ChatRequest, ChatResult, Failure, Outcome, Row
from tests.support import CountingBackend

KEY = "sk-ant-test-adapter-0123456789"
BACKENDS = ["asyncio", "trio"]
LONG_SYSTEM = "You grade answers to questions against a reference. " * 120  # well over 1,024 tokens


def request(model: str = "claude-small", custom_id: str = "judge:0", text: str = "Say yes or no.", **fields: Any) -> ChatRequest:
    body = {
        "model": model,
        "messages": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": text}],
        "max_tokens": 16,
        **fields,
    }
    return ChatRequest(custom_id, custom_id.partition(":")[2], "judge", body, estimated_tokens=20)


class Overloaded:
    """The sim, but the model ``busy`` answers the backend's 503 (Anthropic's 529) and ``broken`` a 500."""

    def __init__(self, settings: SimSettings) -> None:
        self._inner = SimBackend(settings)
        self.name = self._inner.name

    @property
    def models(self) -> tuple[str, ...] | None:
        return self._inner.models

    async def complete(self, body: dict[str, Any]) -> BackendReply:
        if body["model"] == "busy":
            raise BackendError(503, "overloaded", type="server_error", headers=(("Retry-After", "2"),))
        if body["model"] == "broken":
            raise BackendError(500, "it broke", type="server_error")
        return await self._inner.complete(body)


class Gated:
    """The sim, but calls after the first ``free`` wait until :meth:`open` (from any thread);
    ``blocked`` is set once one waits."""

    name = "gated"
    models = None

    def __init__(self, settings: SimSettings, *, free: int) -> None:
        self._inner = SimBackend(settings)
        self.batch_policy = self._inner.batch_policy
        self.blocked = threading.Event()
        self._free = free
        self._gate = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def complete(self, body: dict[str, Any]) -> BackendReply:
        self._free -= 1
        if self._free < 0:
            self._loop = asyncio.get_running_loop()
            self.blocked.set()
            await self._gate.wait()
        return await self._inner.complete(body)

    def open(self) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._gate.set)


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    settings = SimSettings(seed=1, models=("claude-small", "busy", "broken"), rpm=6000, burst_seconds=1.0)
    with EmbeddedServer(Overloaded(settings), api_key=KEY) as base_url:
        yield base_url


def call(url: str, chat: ChatRequest, backend: str, *, key: str = KEY, timeout_s: float = 60.0) -> ChatReply | ProviderError:
    async def main() -> ChatReply | ProviderError:
        async with AnthropicProvider(url, key, api_key_env="ANTHROPIC_TEST_KEY", timeout_s=timeout_s) as client:
            try:
                return await client.complete(chat)
            except ProviderError as exc:
                return exc

    return anyio.run(main, backend=backend)


# -- realtime ----------------------------------------------------------------------------------


def test_the_sdk_gets_the_base_url_without_v1() -> None:
    assert sdk_base_url("http://127.0.0.1:8000/v1") == "http://127.0.0.1:8000"
    assert sdk_base_url("http://127.0.0.1:8000/v1/") == "http://127.0.0.1:8000"
    assert sdk_base_url("https://api.anthropic.com") == "https://api.anthropic.com"
    assert sdk_base_url("https://gateway.example/anthropic/v1") == "https://gateway.example/anthropic"


def test_the_sdk_http_client_is_built_for_the_control_plane_only(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """As the OpenAI adapter's: Messages calls on asyncio never build the SDK's HTTP client."""
    built: list[object] = []

    class Counted(anthropic.DefaultAioHttpClient):
        def __init__(self, **kwargs: Any) -> None:
            built.append(self)
            super().__init__(**kwargs)

    monkeypatch.setattr(anthropic, "DefaultAioHttpClient", Counted)

    async def main() -> tuple[int, int]:
        async with AnthropicProvider(url, KEY) as client:
            for _ in range(3):
                assert isinstance(await client.complete(request()), ChatReply)
            after_calls = len(built)
            assert [job async for job in client.list_batches({}, since=0.0)] == []
            return after_calls, len(built)

    assert anyio.run(main) == (0, 1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_answer_with_usage_and_rate_limits(url: str, backend: str) -> None:
    reply = call(url, request(), backend)
    assert isinstance(reply, ChatReply), reply
    assert reply.content.strip() and reply.model == "sim:claude-small"
    assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0
    assert (reply.usage.cached_tokens, reply.usage.cache_write_tokens) == (0, 0)
    assert reply.rate_limits is not None and reply.rate_limits.limit_requests == 6000
    assert reply.logprobs is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_base_url_may_leave_out_v1(url: str, backend: str) -> None:
    assert isinstance(call(url.removesuffix("/v1"), request(), backend), ChatReply)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_structured_answer_comes_back_as_the_tools_json(url: str, backend: str) -> None:
    reply = call(url, request(response_format=choice_format(("correct", "incorrect"))), backend)
    assert isinstance(reply, ChatReply), reply
    assert json.loads(reply.content)["answer"] in ("correct", "incorrect")
    assert " " not in reply.content  # compact, as the engine reads OpenAI's


async def test_a_shared_system_prompt_is_written_to_the_cache_then_read_from_it(url: str) -> None:
    """With ``prompt_cache_key`` the long system prompt is a breakpoint: the first call writes
    it, the next (another row) reads it, and ``prompt_tokens`` stays the whole prompt."""
    async with AnthropicProvider(url, KEY) as client:
        def row(n: int, **fields: Any) -> ChatRequest:
            chat = request(custom_id=f"judge:{n}", text=f"Row {n}: is 2 + 2 = 4?", **fields)
            chat.body["messages"][0]["content"] = LONG_SYSTEM + (" Uncached." if not fields else "")
            return chat

        first = await client.complete(row(1, prompt_cache_key="judge"))
        second = await client.complete(row(2, prompt_cache_key="judge"))
        plain = [await client.complete(row(n)) for n in (3, 4)]
    assert first.usage.cache_write_tokens > 1024 and first.usage.cached_tokens == 0
    assert second.usage.cached_tokens == first.usage.cache_write_tokens and second.usage.cache_write_tokens == 0
    assert second.usage.prompt_tokens == first.usage.prompt_tokens > second.usage.cached_tokens
    assert all((reply.usage.cached_tokens, reply.usage.cache_write_tokens) == (0, 0) for reply in plain)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_wrong_key_is_an_auth_error_that_names_the_variable_not_the_key(url: str, backend: str) -> None:
    wrong = "sk-ant-wrong-key-9876543210"
    error = call(url, request(), backend, key=wrong)
    assert isinstance(error, AuthError) and (error.kind, error.status_code) == ("no", 401)
    assert "authentication_error" in str(error) and "$ANTHROPIC_TEST_KEY" in str(error)
    assert wrong not in str(error) and KEY not in str(error)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_unknown_model_names_the_model(url: str, backend: str) -> None:
    error = call(url, request("claude-xl"), backend)
    assert isinstance(error, ModelNotFoundError) and (error.kind, error.status_code) == ("no", 404)
    assert "does not serve the model 'claude-xl'" in str(error)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_endpoint_without_the_messages_api_stops_the_run(url: str, backend: str) -> None:
    """A 404 that is not Anthropic's error object: no route, not an unknown model."""
    error = call(url.removesuffix("/v1") + "/openai-only/v1", request(), backend)
    assert isinstance(error, FatalError) and not isinstance(error, ModelNotFoundError)
    assert error.status_code == 404 and "has no Messages API" in str(error)


@pytest.mark.parametrize("backend", BACKENDS)
def test_overloaded_is_529_and_retried_after_what_the_server_said(url: str, backend: str) -> None:
    error = call(url, request("busy"), backend)
    assert isinstance(error, ProviderError) and (error.kind, error.status_code) == ("transient", 529)
    assert "overloaded_error" in str(error) and error.retry_after == 2.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_server_error_is_transient(url: str, backend: str) -> None:
    error = call(url, request("broken"), backend)
    assert isinstance(error, ProviderError) and (error.kind, error.status_code) == ("transient", 500)
    assert "api_error" in str(error)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_429_storm_is_rate_limited_with_the_wait_and_the_budgets(backend: str) -> None:
    """Ten calls at once on a budget of two: two answers, eight refusals each saying how long
    to wait and what the budget is."""
    settings = SimSettings(rpm=2, tpm=100_000, burst_seconds=60)

    async def storm(url: str) -> list[ChatReply | ProviderError]:
        outcomes: list[ChatReply | ProviderError] = []
        async with AnthropicProvider(url, "any") as client:
            async def one(n: int) -> None:
                try:
                    outcomes.append(await client.complete(request(custom_id=f"judge:{n}")))
                except ProviderError as exc:
                    outcomes.append(exc)

            async with anyio.create_task_group() as group:
                for n in range(10):
                    group.start_soon(one, n)
        return outcomes

    with EmbeddedServer(SimBackend(settings)) as url:
        outcomes = anyio.run(storm, url, backend=backend)
    refused = [outcome for outcome in outcomes if isinstance(outcome, ProviderError)]
    assert len(refused) == 8 and sum(isinstance(outcome, ChatReply) for outcome in outcomes) == 2
    for error in refused:
        assert (error.kind, error.status_code, error.reason) == ("rate_limit", 429, "http_429")
        assert error.retry_after is not None and error.retry_after > 0
        budgets = error.rate_limits
        assert budgets is not None and (budgets.limit_requests, budgets.remaining_requests) == (2, 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_closed_port_is_a_transient_connection_error(backend: str) -> None:
    with EmbeddedServer(SimBackend(SimSettings())) as closed:
        pass
    error = call(closed, request(), backend)
    assert isinstance(error, ProviderError) and (error.kind, error.reason) == ("transient", "connection")


@pytest.mark.parametrize("backend", BACKENDS)
def test_timeout_s_bounds_the_whole_call(url: str, backend: str) -> None:
    proxy = FaultProxy(url)
    proxied = proxy.start()
    try:
        proxy.trickle_reply("POST", "/v1/messages", bytes_per_second=20)
        error = call(proxied, request(), backend, timeout_s=0.3)
    finally:
        proxy.stop()
    assert isinstance(error, ProviderError) and (error.kind, error.reason) == ("transient", "timeout"), error


def test_log_probabilities_are_refused_before_anything_is_sent() -> None:
    with EmbeddedServer(SimBackend(SimSettings())) as url:
        proxy = FaultProxy(url)
        proxied = proxy.start()
        try:
            error = call(proxied, request(logprobs=True, top_logprobs=5), "asyncio")
            assert proxy.requests == []
        finally:
            proxy.stop()
    assert isinstance(error, ProviderError) and error.kind == "no"
    assert "no token log-probabilities" in str(error)


def test_rate_limits_fall_back_to_the_input_token_budgets() -> None:
    headers = [
        (b"anthropic-ratelimit-requests-limit", b"50"),
        (b"Anthropic-RateLimit-Requests-Remaining", b"49"),
        (b"anthropic-ratelimit-input-tokens-limit", b"40000"),
        (b"anthropic-ratelimit-input-tokens-remaining", b"39000"),
        (b"anthropic-ratelimit-output-tokens-limit", b"8000"),
        (b"anthropic-ratelimit-requests-reset", b"2026-01-01T00:00:00Z"),
    ]
    assert _rate_limits(headers) == RateLimits(50, 40000, 49, 39000)
    both = [*headers, (b"anthropic-ratelimit-tokens-limit", b"90000"), (b"anthropic-ratelimit-tokens-remaining", b"nan?")]
    assert _rate_limits(both) == RateLimits(50, 90000, 49, 39000)
    assert _rate_limits([(b"x-ratelimit-limit-requests", b"5")]) is None


# -- Message Batches ---------------------------------------------------------------------------

ODD_IDS = ["judge.strict@2:row 7", "judge:é/ü?", "predict:" + "9" * 90]


@pytest.fixture
def batch_url() -> Iterator[str]:
    with EmbeddedServer(SimBackend(SimSettings(seed=2)), api_key=KEY) as base_url:
        yield base_url


def write_requests(client: AnthropicProvider, path: Path, requests: list[ChatRequest]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(client.encode_line(chat) + "\n" for chat in requests), encoding="utf-8")
    return path


async def settle(client: AnthropicProvider, batch_id: str) -> BatchJob:
    """Poll a batch until it ends (bounded: about 20 s)."""
    for _ in range(2000):
        job = await client.retrieve_batch(batch_id)
        if job.terminal:
            return job
        await anyio.sleep(0.01)
    raise AssertionError(f"batch {batch_id} still {job.status}")


async def test_a_whole_batch_round_trip(batch_url: str, tmp_path: Path) -> None:
    """encode -> upload -> create -> retrieve -> download -> read: every outcome under the
    engine's own custom_id, a structured line's content the tool's JSON."""
    structured = request(custom_id="judge:json", response_format=choice_format(("correct", "incorrect")))
    chats = [request(custom_id=custom_id, text=f"Question {n}") for n, custom_id in enumerate(ODD_IDS)] + [structured]
    async with AnthropicProvider(batch_url, KEY) as client:
        path = write_requests(client, tmp_path / "judge-00001.jsonl", chats)
        input_id = await client.upload_input(path, "run.judge-00001.jsonl")
        assert input_id == str(path.resolve()) and await client.find_input("run.judge-00001.jsonl", 1, 0.0) is None
        created = await client.create_batch(input_id, {"engine_run": "r1"})
        assert (created.status, created.input_id, dict(created.tags)) == ("in_progress", input_id, {"engine_run": "r1"})
        assert created.counts is not None and created.counts.total == len(chats)
        ended = await settle(client, created.id)
        paths = await client.download_results(ended, tmp_path / "judge-00001")
        outcomes = {outcome.custom_id: outcome for path in paths for outcome in client.read_results(path)}
    assert (ended.status, ended.input_id, dict(ended.tags)) == ("completed", "", {})
    assert ended.counts is not None and (ended.counts.total, ended.counts.completed, ended.counts.failed) == (4, 4, 0)
    assert ended.finished_at is not None and ended.finished_at >= ended.created_at
    assert paths == [tmp_path / "judge-00001.results.jsonl"]
    assert set(outcomes) == {*ODD_IDS, "judge:json"}
    for outcome in outcomes.values():
        assert isinstance(outcome, ChatResult) and outcome.latency_s is None and outcome.model == "sim:claude-small"
        assert outcome.usage.prompt_tokens > 0 and outcome.usage.completion_tokens > 0
    answer = outcomes["judge:json"]
    assert isinstance(answer, ChatResult) and json.loads(answer.content)["answer"] in ("correct", "incorrect")


async def test_results_are_downloaded_once_and_foreign_ids_are_dropped(batch_url: str, tmp_path: Path) -> None:
    async with AnthropicProvider(batch_url, KEY) as client:
        path = write_requests(client, tmp_path / "judge-00001.jsonl", [request(custom_id=f"judge:{n}") for n in range(3)])
        ended = await settle(client, (await client.create_batch(await client.upload_input(path, "x"), {})).id)
        # The request file now names only two of the three lines: the third's result is dropped.
        write_requests(client, path, [request(custom_id=f"judge:{n}") for n in range(2)])
        [results] = await client.download_results(ended, tmp_path / "judge-00001")
        assert [json.loads(line)["custom_id"] for line in results.read_text().splitlines()].count("judge:2") == 0
        assert len(results.read_text().splitlines()) == 2
        results.write_text("kept\n")
        assert await client.download_results(ended, tmp_path / "judge-00001") == [results]
    assert results.read_text() == "kept\n" and not list(tmp_path.glob("*.part"))


async def test_another_runs_batch_of_the_same_rows_maps_no_line_back(batch_url: str, tmp_path: Path) -> None:
    """Two runs judge the same rows (same engine custom_ids): a batch of the other run, adopted by
    mistake, maps none of its lines back as this run's; they show as missing and are retried."""
    rows = [request(custom_id=f"judge:{n}") for n in range(3)]
    async with AnthropicProvider(batch_url, KEY) as client:
        theirs = write_requests(client, (tmp_path / "their-run" / "batches").joinpath("judge-00001.jsonl"), rows)
        ours = write_requests(client, (tmp_path / "our-run" / "batches").joinpath("judge-00001.jsonl"), rows)
        ended = await settle(client, (await client.create_batch(await client.upload_input(theirs, "x"), {})).id)
        [results] = await client.download_results(ended, ours.with_suffix(""))
        assert results.read_text() == ""
        [their_results] = await client.download_results(ended, theirs.with_suffix(""))
    assert len(their_results.read_text().splitlines()) == 3


async def test_a_batch_whose_create_reply_was_lost_is_found_by_its_size(batch_url: str, tmp_path: Path) -> None:
    """The create reached the server, its reply did not reach us: ``find_batch`` finds the batch
    among those not ``known`` with as many requests as the file, and lists leave out none."""
    proxy = FaultProxy(batch_url)
    proxied = proxy.start()
    try:
        async with AnthropicProvider(proxied, KEY) as client:
            async def chunk(name: str, ids: range) -> str:
                path = write_requests(client, tmp_path / f"{name}.jsonl", [request(custom_id=f"judge:{n}") for n in ids])
                return await client.upload_input(path, name)

            other = await client.create_batch(await chunk("judge-00001", range(1)), {})
            known = await client.create_batch(await chunk("judge-00002", range(1, 4)), {})
            lost_input = await chunk("judge-00003", range(4, 7))
            proxy.drop_reply("POST", "/v1/messages/batches")
            with pytest.raises(ProviderError) as dropped:
                await client.create_batch(lost_input, {"engine_chunk": "judge-00003"})
            assert dropped.value.kind == "transient"
            tags = {"engine_chunk": "judge-00003"}
            found = await client.find_batch(lost_input, tags, 0.0, frozenset({known.id}))
            listed = [job.id async for job in client.list_batches({}, 0.0)]
            assert [job async for job in client.list_batches(tags, 0.0)] == []
            assert await client.find_batch(lost_input, tags, 0.0, frozenset({known.id, *listed})) is None
            assert await client.find_batch(str(tmp_path / "gone.jsonl"), tags, 0.0, frozenset()) is None
            # Two of the same size: without ``known`` the oldest is taken (the limit its docstring owns up to).
            oldest = await client.find_batch(lost_input, tags, 0.0, frozenset())
            later = await client.find_batch(lost_input, tags, found.created_at + 1 if found else 0.0, frozenset())
    finally:
        proxy.stop()
    assert found is not None and found.id not in (known.id, other.id)
    assert (found.input_id, dict(found.tags), found.counts and found.counts.total) == (lost_input, tags, 3)
    assert listed == [found.id, known.id, other.id]
    assert oldest is not None and oldest.id == known.id and later is None


async def test_a_cancelled_batch_ends_cancelled_and_its_unrun_lines_say_so(tmp_path: Path) -> None:
    """One line at a time: the first is answered, the second held in flight when the batch is
    cancelled and let through after; the last two never run."""
    backend = Gated(SimSettings(), free=1)
    with EmbeddedServer(backend, api_key=KEY, batch_settings=BatchSettings(concurrency=1)) as url:
        async with AnthropicProvider(url, KEY) as client:
            path = write_requests(client, tmp_path / "judge-00001.jsonl", [request(custom_id=f"judge:{n}") for n in range(4)])
            created = await client.create_batch(await client.upload_input(path, "x"), {})
            assert await anyio.to_thread.run_sync(backend.blocked.wait, 30.0)
            cancelling = await client.cancel_batch(created.id)
            backend.open()
            ended = await settle(client, created.id)
            [results] = await client.download_results(ended, tmp_path / "judge-00001")
            outcomes = {outcome.custom_id: outcome for outcome in client.read_results(results)}
    assert cancelling.status == "cancelling" and ended.status == "cancelled"
    assert ended.counts is not None and (ended.counts.total, ended.counts.completed, ended.counts.failed) == (4, 2, 2)
    assert {custom_id for custom_id, outcome in outcomes.items() if isinstance(outcome, ChatResult)} == {"judge:0", "judge:1"}
    assert {custom_id: outcome.reason for custom_id, outcome in outcomes.items() if isinstance(outcome, Failure)} == {
        "judge:2": "batch_cancelled", "judge:3": "batch_cancelled",
    }


async def test_an_unknown_batch_is_a_final_404_and_a_server_without_batches_stops_the_run(batch_url: str, tmp_path: Path) -> None:
    async with AnthropicProvider(batch_url, KEY) as client:
        with pytest.raises(ProviderError) as unknown:
            await client.retrieve_batch("msgbatch_nope")
    assert not isinstance(unknown.value, BatchApiMissingError)
    assert (unknown.value.kind, unknown.value.status_code) == ("no", 404)
    with EmbeddedServer(SimBackend(SimSettings()), batch_api=False) as url:
        async with AnthropicProvider(url, "any") as client:
            path = write_requests(client, tmp_path / "judge-00001.jsonl", [request()])
            with pytest.raises(BatchApiMissingError) as missing:
                await client.create_batch(await client.upload_input(path, "x"), {})
    assert "no Message Batches API" in str(missing.value)


async def test_a_file_over_the_request_limit_is_refused_before_it_is_sent(tmp_path: Path) -> None:
    path = tmp_path / "judge-00001.jsonl"
    with path.open("w", encoding="utf-8") as out:
        for n in range(MAX_BATCH_REQUESTS + 1):
            out.write(json.dumps({"custom_id": f"judge:{n}", "params": {}}) + "\n")
    async with AnthropicProvider("http://127.0.0.1:9/v1", KEY) as client:
        with pytest.raises(ProviderError) as refused:
            await client.create_batch(str(path), {})
    assert refused.value.kind == "no" and "100,001 requests" in str(refused.value)


async def test_the_request_file_is_its_own_only_copy(tmp_path: Path) -> None:
    async with AnthropicProvider("http://127.0.0.1:9/v1", KEY) as client:
        source = write_requests(client, tmp_path / "judge-00001.jsonl", [request()])
        await client.download_input(await client.upload_input(source, "x"), tmp_path / "copy.jsonl")
        assert (tmp_path / "copy.jsonl").read_bytes() == source.read_bytes()
        for gone in ("", str(tmp_path / "gone.jsonl")):
            with pytest.raises(ProviderError) as missing:
                await client.download_input(gone, tmp_path / "restored.jsonl")
            assert missing.value.kind == "no" and "keep no copy" in str(missing.value)
    assert not (tmp_path / "restored.jsonl").exists()


async def test_a_resume_adopts_only_the_batch_whose_create_was_begun(tmp_path: Path) -> None:
    """Killed with two request files of one size uploaded: the create of the second had begun (its
    journal line says so) and reached the server, its reply lost with the process; the first's
    never began. The resumed stage adopts the server's batch for the second only, and creates the
    first's: each line reaches the model once."""
    backend = CountingBackend(SimSettings(seed=5))
    delivered: dict[str, Outcome] = {}

    async def deliver(row: Row, outcome: Outcome) -> None:
        delivered[outcome.custom_id] = outcome

    with EmbeddedServer(backend) as url:
        async with AnthropicProvider(url, KEY) as client:
            run_dir = RunDir(tmp_path / "run")
            run_dir.batches_dir.mkdir(parents=True)
            log = EventLog(run_dir.batch_events)
            for number, rows in ((1, range(3)), (2, range(3, 6))):
                path = write_requests(client, run_dir.batches_dir / f"judge-0000{number}.jsonl",
                                      [request(custom_id=f"judge:{n}", text=f"Row {n}: yes or no?") for n in rows])
                log.append({"event": "file", "stage": "judge", "chunk": path.stem, "file_id": str(path.resolve()),
                            "attempt": 0, "lines": 3})
            second = str((run_dir.batches_dir / "judge-00002.jsonl").resolve())
            log.append({"event": "creating", "stage": "judge", "chunk": "judge-00002", "file_id": second})
            lost = await client.create_batch(second, {})  # its reply "lost": no batch line in the journal
            clock = InstantClock()
            stage = BatchStage(
                stage="judge", provider=client, run_dir=run_dir, run_id="run",
                settings=BatchConfig(poll_initial_s=0.02, poll_max_s=0.05), policy=RetryPolicy(), clock=clock,
                realtime=RealtimeRunner(client, Limiter(concurrency=4, clock=clock), RetryPolicy(), clock),
                journaled=lambda custom_ids: set(), progress={}, outage_timeout_s=900.0,
            )
            async with anyio.create_task_group() as group:
                await group.start(stage.run, deliver)
                for n in range(6):
                    await stage.submit(Row(str(n), n, {}), request(custom_id=f"judge:{n}", text=f"Row {n}: yes or no?"))
                await stage.close()
            batches = [batch async for batch in client.list_batches({}, 0.0)]
    assert sorted(delivered) == [f"judge:{n}" for n in range(6)]
    assert all(isinstance(outcome, ChatResult) for outcome in delivered.values())
    assert backend.calls == 6 and len(batches) == 2  # the lost one adopted, one new: no line twice
    adopted = [event for event in log.events() if event["event"] == "batch" and event["chunk"] == "judge-00002"]
    assert [event["batch_id"] for event in adopted] == [lost.id]
