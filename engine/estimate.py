"""``--dry-run``: what a run would send and cost, computed from the data set alone.

The requests are built as a run builds them. Prompt tokens are the same estimate the rate
limiter uses (about 4 characters a token); completion tokens are counted at each request's
``max_tokens`` as sent (a constrained request sends more than the config's, room for its JSON
answer), and the judge prompt with a prediction as long as the predict request's ``max_tokens``,
so the figures are an upper bound. Nothing is sent and nothing is written.

Prompt caching: the prefix every request of a caller shares (its system prompt, a judge's
instructions with ``cache``) is what a provider's prompt cache can serve. OpenAI caches it by
itself from 1,024 tokens in 128-token steps; Anthropic where the engine marks it (the system
prompt, with the stage's ``cache``), from 1,024 tokens, written once and read by every later
request. The cached tokens assume the cache holds the prefix for the whole run (a provider keeps
it minutes after its last use): the cost with them is a lower bound of what caching saves less.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from .config import EndpointConfig, TaskConfig
from .dataset import Dataset
from .prompts import PromptBuilder
from .types import ChatRequest, caller_of

MIN_CACHED_TOKENS = 1024  # the shortest prefix OpenAI and Anthropic cache
CACHE_STEP_TOKENS = 128  # OpenAI caches in steps of this many tokens


@dataclass(slots=True)
class StageEstimate:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    request_bytes: int = 0
    shared: str | None = None  # the prompt text every request so far began with
    system: str | None = None  # the system prompt every request so far had

    def add(self, request: ChatRequest) -> None:
        max_tokens = request.body["max_tokens"]
        self.requests += 1
        self.prompt_tokens += request.estimated_tokens - max_tokens
        self.completion_tokens += max_tokens
        self.request_bytes += len(json.dumps(request.body).encode()) + 100  # + the line's envelope
        messages = request.body["messages"]
        text = "".join(f"{message['role']}\n{message['content']}\n" for message in messages)
        system = "".join(message["content"] for message in messages if message["role"] == "system")
        self.shared = text if self.shared is None else _common_prefix(self.shared, text)
        self.system = system if self.system in (None, system) else ""

    def cache_tokens(self, endpoint: EndpointConfig, marked: bool) -> tuple[int, int]:
        """(read, written): the prompt tokens the provider's cache would serve and take in over
        the stage's requests (see the module doc); about four characters a token."""
        if self.requests < 2 or not self.shared:
            return 0, 0
        if endpoint.provider == "anthropic":
            tokens = len(self.system or "") // 4
            if not marked or tokens < MIN_CACHED_TOKENS:
                return 0, 0
            return tokens * (self.requests - 1), tokens
        tokens = len(self.shared) // 4
        if tokens < MIN_CACHED_TOKENS:
            return 0, 0
        cached = MIN_CACHED_TOKENS + (tokens - MIN_CACHED_TOKENS) // CACHE_STEP_TOKENS * CACHE_STEP_TOKENS
        return cached * (self.requests - 1), 0


def _common_prefix(first: str, second: str) -> str:
    end = next((i for i, (a, b) in enumerate(zip(first, second, strict=False)) if a != b), min(len(first), len(second)))
    return first[:end]


def estimate(config: TaskConfig) -> dict[str, Any]:
    dataset = Dataset(config.dataset, label_set=config.labels, where=config.where)
    builder = PromptBuilder(config, dataset.columns)
    columns = tuple(name for name in dataset.columns if name in builder.template_fields)
    stages = {"predict": StageEstimate(), **{prefix: StageEstimate() for prefix in builder.judge_prefixes}}
    skipped = 0
    for row, _ in dataset.rows(columns):
        if not any(str(row.fields.get(name) or "").strip() for name in builder.text_fields):
            skipped += 1
            continue
        predict = builder.predict(row)
        stages["predict"].add(predict)
        placeholder = "x" * (4 * predict.body["max_tokens"])  # the longest answer the predict call may give
        for prefix, (index, repeat) in builder.calls.items():  # each judge, each repeat
            stages[caller_of(prefix)].add(builder.judge(row, placeholder, index, repeat))
    result: dict[str, Any] = {"rows": dataset.n_rows, "skipped": skipped, "stages": {}}
    total_cost: float | None = None
    for name, stage_config in config.callers:
        figures = stages[name]
        price = config.prices.get(stage_config.model)
        endpoint = config.endpoint_of(name)
        read, written = figures.cache_tokens(endpoint, stage_config.cache)
        cost = None
        if price is not None:
            per_input, per_output = price.per_token(stage_config.mode)
            per_read, per_write = price.per_cache_token(stage_config.mode)
            uncached = figures.prompt_tokens - read - written
            cost = uncached * per_input + read * per_read + written * per_write + figures.completion_tokens * per_output
            total_cost = (total_cost or 0.0) + cost
        files = None
        if stage_config.mode == "batch" and figures.requests:
            files = max(
                math.ceil(figures.requests / config.batch.max_requests_per_file),
                math.ceil(figures.request_bytes / config.batch.max_bytes_per_file),
            )
        result["stages"][name] = {
            "model": stage_config.model,
            "mode": stage_config.mode,
            "requests": figures.requests,
            "endpoint": endpoint.described,
            "prompt_tokens": figures.prompt_tokens,
            "cached_prompt_tokens": read,
            "cache_write_tokens": written,
            "completion_tokens_at_most": figures.completion_tokens,
            "batch_files": files,
            "cost_usd_at_most": None if cost is None else round(cost, 4),
        }
    result["cost_usd_at_most"] = None if total_cost is None else round(total_cost, 4)
    return result
