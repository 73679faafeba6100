"""Predict -> judge wiring, the incremental join, and live counters.

Each owed row gets a task: predict (unless the journal already has it), then judge (unless the
journal already has that too). A row's judge call is issued the moment its prediction exists, so
the two stages overlap. ``JoinState`` holds predictions that wait for their verdict, keyed by
row id (``custom_id`` carries it), and emits a ``JoinedRow`` the moment a row is complete. How many
rows are in the pipeline at once is bounded, so memory stays flat on any input size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from ..journal import Journal, record_to_outcome
from ..judges import Judge, judge_index
from ..prompts import PromptBuilder, prediction_is_valid
from ..types import ChatResult, Failure, JoinedRow, Outcome, Row, RowStatus, Usage
from . import streams
from .batch_stage import BatchProgress
from .retry import is_transient
from .stage import Stage


@dataclass(slots=True)
class LiveStats:
    """What the progress display shows; updated as rows complete."""

    total: int = 0
    predicted: int = 0
    judged: int = 0
    failed: int = 0
    skipped: int = 0
    verdicts: int = 0
    correct: int = 0
    tokens: int = 0
    done_at_start: int = 0
    started: float = 0.0
    batches: dict[str, BatchProgress] = field(default_factory=dict)

    @property
    def done(self) -> int:
        return self.judged + self.failed + self.skipped

    @property
    def judge_accuracy(self) -> float | None:
        return self.correct / self.verdicts if self.verdicts else None

    def count(self, row: JoinedRow) -> None:
        """Count a completed row (predictions are counted as they arrive, by the pipeline)."""
        self.tokens += row.predict_tokens.total_tokens + row.judge_tokens.total_tokens
        if row.status == "skipped":
            self.skipped += 1
            return
        if row.status == "judged":
            self.judged += 1
            if row.verdict is not None:
                self.verdicts += 1
                self.correct += row.verdict
        else:
            self.failed += 1


class JoinState:
    """Pending predictions by row id; turns a prediction and its verdicts into a joined row.

    With a panel of judges a row completes when every judge has answered (or failed); its
    ``verdict`` is the strict majority of the recognised verdicts, None on a tie.
    """

    def __init__(
        self,
        label_set: tuple[str, ...],
        judges: tuple[Judge, ...],
        answer: Callable[[str, str], str] = lambda caller, content: content,
    ) -> None:
        """``answer(caller, content)`` reads the answer out of a reply (a constrained reply is
        JSON); ``judges`` are the task's, in panel order."""
        self._labels = frozenset(label_set)
        self._judges = judges
        self._prefixes = tuple(judge.prefix for judge in judges)
        self._answer = answer
        self._pending: dict[str, tuple[Row, ChatResult, list[Outcome | None]]] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def prediction(self, row: Row, outcome: Outcome) -> JoinedRow | None:
        """Record a prediction; a failed one completes the row at once."""
        if isinstance(outcome, Failure):
            return _joined(row, None, [], self._labels, error=f"{outcome.reason}: {outcome.message}")
        self._pending[row.row_id] = (row, self._answered("predict", outcome), [None] * len(self._judges))
        return None

    def verdict(self, row_id: str, outcome: Outcome) -> JoinedRow | None:
        """Record one judge's outcome; the joined row once every judge of the row has one."""
        row, prediction, verdicts = self._pending[row_id]
        index = judge_index(outcome.custom_id, self._prefixes)
        if isinstance(outcome, ChatResult):
            outcome = self._answered(self._prefixes[index], outcome)
        verdicts[index] = outcome
        if any(verdict is None for verdict in verdicts):
            return None
        del self._pending[row_id]
        return _joined(row, prediction, verdicts, self._labels, judges=self._judges)  # type: ignore[arg-type]

    def _answered(self, caller: str, result: ChatResult) -> ChatResult:
        answer = self._answer(caller, result.content)
        return result if answer == result.content else replace(result, content=answer)


def majority(verdicts: list[bool | None]) -> bool | None:
    """Strict majority of the recognised verdicts; None on a tie or with none recognised."""
    yes = sum(1 for verdict in verdicts if verdict is True)
    no = sum(1 for verdict in verdicts if verdict is False)
    return None if yes == no else yes > no


def _joined(
    row: Row,
    prediction: ChatResult | None,
    verdicts: list[Outcome],
    labels: frozenset[str],
    *,
    error: str | None = None,
    judges: tuple[Judge, ...] = (),
) -> JoinedRow:
    text = prediction.content if prediction else None
    answer = text.strip() if text is not None else None
    answers = [verdict for verdict in verdicts if isinstance(verdict, ChatResult)]
    failures = [verdict for verdict in verdicts if isinstance(verdict, Failure)]
    parsed = [judge.verdict(v.content) if isinstance(v, ChatResult) else None for judge, v in zip(judges, verdicts, strict=True)]
    status: RowStatus = "predict_failed" if prediction is None else "judged" if answers else "judge_failed"
    if failures and error is None:
        error = "; ".join(f"{failure.reason}: {failure.message}" for failure in failures)
    latencies = [v.latency_s for v in answers if v.latency_s is not None]
    return JoinedRow(
        row_id=row.row_id,
        index=row.index,
        status=status,
        fields=row.fields,
        labels=row.labels,
        prediction=text,
        prediction_valid=prediction_is_valid(text, labels) if text is not None else None,
        verdict_text=" | ".join(v.content if isinstance(v, ChatResult) else "" for v in verdicts) if answers else None,
        verdict=majority(parsed),
        ground_truth_correct=(answer in row.labels) if row.labels is not None and answer is not None else None,
        error=error,
        predict_tokens=prediction.usage if prediction else Usage(),
        judge_tokens=Usage(sum(v.usage.prompt_tokens for v in answers), sum(v.usage.completion_tokens for v in answers)),
        predict_latency_s=prediction.latency_s if prediction else None,
        judge_latency_s=max(latencies) if latencies else None,
        verdicts=tuple(parsed),
        verdict_texts=tuple(v.content if isinstance(v, ChatResult) else None for v in verdicts),
    )


def skipped_row(row: Row, reason: str) -> JoinedRow:
    return JoinedRow(
        row_id=row.row_id,
        index=row.index,
        status="skipped",
        fields=row.fields,
        labels=row.labels,
        prediction=None,
        prediction_valid=None,
        verdict_text=None,
        verdict=None,
        ground_truth_correct=None,
        error=reason,
    )


OwedRow = tuple[Row, dict[str, dict[str, Any] | None]]


class Pipeline:
    """Runs every owed row through predict and judge; joined rows go to ``emit``.

    A row holds one of ``rows_in_flight`` slots from the moment it is admitted until it is
    emitted. Before the feeder would wait for a slot it flushes both stages, so rows queued in
    an unsealed batch file can never hold up the rows that would complete them.
    """

    def __init__(
        self,
        *,
        builder: PromptBuilder,
        join: JoinState,
        predict: Stage,
        judge: Stage,
        journal: Journal,
        emit: MemoryObjectSendStream[JoinedRow],
        stats: LiveStats,
        rows_in_flight: int,
        retry_failed: bool = False,
    ) -> None:
        """``retry_failed``: a journaled failure is tried again whatever its reason (else only
        a transient one is, see ``retry.is_transient``)."""
        self._builder = builder
        self._join = join
        self._predict = predict
        self._judge = judge
        self._journal = journal
        self._emit = emit
        self._stats = stats
        self._slots = anyio.Semaphore(rows_in_flight)
        self._retry_failed = retry_failed

    async def run(self, owed: Iterator[OwedRow]) -> None:
        """Process every owed row; returns when all are joined (and closes ``emit``)."""
        async with self._emit, anyio.create_task_group() as group:
            await group.start(self._judge.run, self._on_verdict)
            async with anyio.create_task_group() as predicting:
                await predicting.start(self._predict.run, self._on_prediction)
                for row, records in owed:
                    if self._slots.value == 0:
                        await self._predict.flush()
                        await self._judge.flush()
                    await self._slots.acquire()
                    await self._admit(row, records)
                await self._predict.close()
            await self._judge.close()

    async def _admit(self, row: Row, records: dict[str, dict[str, Any] | None]) -> None:
        """Start a row, or pick it up where the journal left it (``records`` by stage/judge)."""
        predict_record = records.get("predict")
        if predict_record is not None and self._stands(predict_record, row):
            prediction = record_to_outcome(predict_record)
            judged = {
                index: record_to_outcome(record)
                for index, prefix in enumerate(self._builder.judge_prefixes)
                if (record := records.get(prefix)) is not None and self._stands(record, row)
            }
            await self._predicted(row, prediction, judged)
        elif not any(str(row.fields.get(name) or "").strip() for name in self._builder.text_fields):
            await self._complete(skipped_row(row, "empty_input: every field the predict template reads is empty"))
        else:
            await self._predict.submit(row, self._builder.predict(row))

    def _stands(self, record: dict[str, Any], row: Row) -> bool:
        """Whether a journaled outcome is kept: its row has not changed since (a record without
        a fingerprint predates them) and it is not a failure to try again."""
        if record.get("fingerprint") and row.fingerprint and record["fingerprint"] != row.fingerprint:
            return False
        if record["ok"]:
            return True
        return not (self._retry_failed or is_transient(record["reason"] or "", record["status_code"]))

    async def _on_prediction(self, row: Row, outcome: Outcome) -> None:
        self._journal.append("predict", row, outcome)  # before any await: see journal.py
        await self._predicted(row, outcome, {})

    async def _predicted(self, row: Row, outcome: Outcome, judged: dict[int, Outcome]) -> None:
        """Join the prediction, then ask every judge that has not answered yet."""
        joined = self._join.prediction(row, outcome)
        if joined is not None:
            await self._complete(joined)
            return
        self._stats.predicted += 1
        assert isinstance(outcome, ChatResult)
        answer = self._builder.answer("predict", outcome.content)
        for index in range(len(self._builder.judge_prefixes)):
            if index in judged:
                joined = self._join.verdict(row.row_id, judged[index])
            else:
                await self._judge.submit(row, self._builder.judge(row, answer, index))
        if joined is not None:
            await self._complete(joined)

    async def _on_verdict(self, row: Row, outcome: Outcome) -> None:
        self._journal.append("judge", row, outcome)
        joined = self._join.verdict(row.row_id, outcome)
        if joined is not None:
            await self._complete(joined)

    async def _complete(self, joined: JoinedRow) -> None:
        await streams.send(self._emit, joined)
        self._slots.release()
