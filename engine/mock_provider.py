"""``MockProvider``: a provider in memory that answers from a function, for tests.

    def answer(request: ChatRequest) -> str:
        return "Drama" if request.stage == "predict" else "correct"

    async with Evaluation(config, provider=MockProvider(answer)) as evaluation:
        ...

Realtime calls and batch lines both go through ``answer``, which returns the reply's text (or a
whole ``ChatReply``) or raises ``ProviderError``: a realtime call raises it to the engine, a batch
line carries it as a failed line. A batch finishes at its ``turnaround``-th retrieval after it
was created. ``answered`` records every request answered, in order, with how it travelled; the
request files and result lines are the mock's own format, not any real provider's.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import anyio

from .errors import BatchApiMissingError, ProviderError
from .provider import BatchCounts, BatchJob, ChatReply, made_from
from .types import ChatRequest, ChatResult, Failure, Outcome, StageName, TokenLogprob, Usage

Answer = Callable[[ChatRequest], str | ChatReply]


@dataclass(slots=True)
class _Batch:
    job: BatchJob
    lines: list[str]
    polls_left: int
    results: list[dict[str, Any]] = field(default_factory=list)


class MockProvider:
    """``engine.provider.Provider`` in memory. ``batch_api=False`` acts as an endpoint without
    a batch API (every batch call raises ``BatchApiMissingError``)."""

    def __init__(self, answer: Answer, *, turnaround: int = 1, batch_api: bool = True) -> None:
        self._answer = answer
        self._turnaround = turnaround
        self._batch_api = batch_api
        self._inputs: dict[str, tuple[str, list[str]]] = {}
        self._batches: dict[str, _Batch] = {}
        self.answered: list[tuple[Literal["realtime", "batch"], ChatRequest]] = []
        self.entered = self.closed = False

    async def __aenter__(self) -> MockProvider:
        self.entered = True
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.closed = True

    @property
    def batches(self) -> list[BatchJob]:
        """Every batch created, oldest first."""
        return [batch.job for batch in self._batches.values()]

    # -- realtime --------------------------------------------------------------------------

    async def complete(self, request: ChatRequest) -> ChatReply:
        self.answered.append(("realtime", request))
        return self._reply(request)

    def _reply(self, request: ChatRequest) -> ChatReply:
        answer = self._answer(request)
        if isinstance(answer, ChatReply):
            return answer
        prompt = sum(len(str(message.get("content") or "")) for message in request.body.get("messages", [])) // 4
        return ChatReply(answer, str(request.body.get("model") or "mock"), Usage(prompt, len(answer) // 4 + 1), 0.0)

    # -- batches -----------------------------------------------------------------------------

    def encode_line(self, request: ChatRequest) -> str:
        return json.dumps({"custom_id": request.custom_id, "row_id": request.row_id, "stage": request.stage,
                           "body": request.body, "estimated_tokens": request.estimated_tokens})

    def decode_line(self, line: str) -> tuple[str, dict[str, Any]]:
        decoded = json.loads(line)
        return str(decoded["custom_id"]), decoded["body"]

    async def upload_input(self, path: Path, name: str) -> str:
        self._require_batch_api()
        input_id = f"input-{len(self._inputs) + 1}"
        text = await anyio.Path(path).read_text(encoding="utf-8")
        self._inputs[input_id] = (name, [line for line in text.splitlines() if line])
        return input_id

    async def find_input(self, name: str, size: int, since: float) -> str | None:
        self._require_batch_api()
        for input_id, (uploaded, lines) in reversed(self._inputs.items()):
            if uploaded == name and sum(len(line.encode()) + 1 for line in lines) == size:
                return input_id
        return None

    async def create_batch(self, input_id: str, tags: Mapping[str, str]) -> BatchJob:
        self._require_batch_api()
        lines = self._inputs[input_id][1]
        job = BatchJob(f"batch-{len(self._batches) + 1}", "in_progress", input_id, time.time(), dict(tags),
                       BatchCounts(total=len(lines)))
        self._batches[job.id] = _Batch(job, lines, self._turnaround)
        return job

    async def retrieve_batch(self, batch_id: str) -> BatchJob:
        self._require_batch_api()
        batch = self._batches[batch_id]
        if not batch.job.terminal:
            batch.polls_left -= 1
            if batch.polls_left <= 0:
                self._execute(batch)
        return batch.job

    async def cancel_batch(self, batch_id: str) -> BatchJob:
        self._require_batch_api()
        batch = self._batches[batch_id]
        if not batch.job.terminal:
            batch.job = _ended(batch.job, "cancelled")
        return batch.job

    async def list_batches(self, tags: Mapping[str, str], since: float) -> AsyncIterator[BatchJob]:
        self._require_batch_api()
        for batch in reversed(list(self._batches.values())):
            if batch.job.created_at >= since and all(batch.job.tags.get(key) == value for key, value in tags.items()):
                yield batch.job

    async def find_batch(
        self, input_id: str, tags: Mapping[str, str], since: float, known: frozenset[str]
    ) -> BatchJob | None:
        return await made_from(self.list_batches(tags, since), input_id, known)

    async def download_results(self, job: BatchJob, stem: Path) -> list[Path]:
        self._require_batch_api()
        path = anyio.Path(stem.with_name(f"{stem.name}.results.jsonl"))
        if not await path.exists():
            lines = [json.dumps(result) + "\n" for result in self._batches[job.id].results]
            await path.write_text("".join(lines), encoding="utf-8")
        return [Path(path)]

    async def download_input(self, input_id: str, path: Path) -> None:
        self._require_batch_api()
        await anyio.Path(path).write_text("".join(line + "\n" for line in self._inputs[input_id][1]), encoding="utf-8")

    def read_results(self, path: Path) -> Iterator[Outcome]:
        with path.open(encoding="utf-8") as source:
            for line in source:
                result = json.loads(line)
                if "error" in result:
                    error = result["error"]
                    yield Failure(result["custom_id"], error["reason"], error["message"], error["status_code"])
                else:
                    usage = Usage(*result["usage"])
                    logprobs = result.get("logprobs")
                    tokens = None if logprobs is None else tuple(
                        TokenLogprob(token, logprob, tuple((text, value) for text, value in top))
                        for token, logprob, top in logprobs
                    )
                    yield ChatResult(result["custom_id"], result["content"], result["model"], usage, latency_s=None,
                                     logprobs=tokens)

    def _execute(self, batch: _Batch) -> None:
        """Answer every line of a batch and end it ``completed``."""
        failed = 0
        for line in batch.lines:
            decoded = json.loads(line)
            stage: StageName = decoded["stage"]
            request = ChatRequest(decoded["custom_id"], decoded["row_id"], stage, decoded["body"],
                                  decoded["estimated_tokens"])
            self.answered.append(("batch", request))
            try:
                reply = self._reply(request)
            except ProviderError as error:
                failed += 1
                batch.results.append({"custom_id": request.custom_id, "error": {
                    "reason": error.reason, "message": str(error), "status_code": error.status_code}})
                continue
            logprobs = None if reply.logprobs is None else [[t.token, t.logprob, t.top] for t in reply.logprobs]
            batch.results.append({"custom_id": request.custom_id, "content": reply.content, "model": reply.model,
                                  "usage": [reply.usage.prompt_tokens, reply.usage.completion_tokens],
                                  "logprobs": logprobs})
        counts = BatchCounts(len(batch.lines), len(batch.lines) - failed, failed)
        batch.job = _ended(batch.job, "completed", counts)

    def _require_batch_api(self) -> None:
        if not self._batch_api:
            raise BatchApiMissingError("the mock provider has no batch API", kind="no", reason="http_404",
                                       status_code=404)


def _ended(job: BatchJob, status: str, counts: BatchCounts | None = None) -> BatchJob:
    counts = counts or job.counts
    return replace(job, status=status, counts=counts, in_progress_at=job.created_at, finished_at=time.time())
