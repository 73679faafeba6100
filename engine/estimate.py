"""``--dry-run``: what a run would send and cost, computed from the data set alone.

The requests are built as a run builds them. Prompt tokens are the same estimate the rate
limiter uses (about 4 characters a token); completion tokens are counted at each request's
``max_tokens`` as sent (a constrained request sends more than the config's, room for its JSON
answer), and the judge prompt with a prediction as long as the predict request's ``max_tokens``,
so the figures are an upper bound. Nothing is sent and nothing is written.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from .config import TaskConfig
from .dataset import Dataset
from .prompts import PromptBuilder
from .types import ChatRequest, caller_of


@dataclass(slots=True)
class StageEstimate:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    request_bytes: int = 0

    def add(self, request: ChatRequest) -> None:
        max_tokens = request.body["max_tokens"]
        self.requests += 1
        self.prompt_tokens += request.estimated_tokens - max_tokens
        self.completion_tokens += max_tokens
        self.request_bytes += len(json.dumps(request.body).encode()) + 100  # + the line's envelope


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
    for name, stage_config in (("predict", config.predict), *zip(builder.judge_prefixes, config.judges, strict=True)):
        figures = stages[name]
        price = config.prices.get(stage_config.model)
        cost = None
        if price is not None:
            per_input, per_output = price.per_token(stage_config.mode)
            cost = figures.prompt_tokens * per_input + figures.completion_tokens * per_output
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
            "prompt_tokens": figures.prompt_tokens,
            "completion_tokens_at_most": figures.completion_tokens,
            "batch_files": files,
            "cost_usd_at_most": None if cost is None else round(cost, 4),
        }
    result["cost_usd_at_most"] = None if total_cost is None else round(total_cost, 4)
    return result
