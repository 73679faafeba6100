"""Predict -> judge wiring, the incremental join, and live counters.

Each owed row gets a task: predict (unless the journal already has it), then judge (unless the
journal already has that too). A row's judge call is issued the moment its prediction exists, so
the two stages overlap. ``JoinState`` holds predictions that wait for their verdict, keyed by
row id (``custom_id`` carries it), and emits a ``JoinedRow`` the moment a row is complete. How many
rows are in the pipeline at once is bounded, so memory stays flat on any input size.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.abc import ObjectSendStream

from .journal import JournalSend, record_to_outcome
from .prompts import PromptBuilder, VerdictParser, prediction_is_valid
from .realtime import RealtimeRunner
from .types import ChatResult, Failure, JoinedRow, Outcome, Row, RowStatus, Stage, Usage


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
    started: float = 0.0

    @property
    def done(self) -> int:
        return self.judged + self.failed + self.skipped

    @property
    def judge_accuracy(self) -> float | None:
        return self.correct / self.verdicts if self.verdicts else None

    def count(self, row: JoinedRow) -> None:
        """Count a completed row (predictions are counted as they arrive, by the pipeline)."""
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
    """Pending predictions by row id; turns (prediction, verdict) pairs into joined rows."""

    def __init__(self, label_set: tuple[str, ...], parse_verdict: VerdictParser) -> None:
        self._labels = frozenset(label_set)
        self._parse_verdict = parse_verdict
        self._pending: dict[str, tuple[Row, ChatResult]] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def prediction(self, row: Row, outcome: Outcome) -> JoinedRow | None:
        """Record a prediction; a failed one completes the row at once."""
        if isinstance(outcome, Failure):
            return _joined(row, "predict_failed", None, None, error=f"{outcome.reason}: {outcome.message}")
        self._pending[row.row_id] = (row, outcome)
        return None

    def verdict(self, row_id: str, outcome: Outcome) -> JoinedRow:
        row, prediction = self._pending.pop(row_id)
        if isinstance(outcome, Failure):
            return _joined(
                row, "judge_failed", prediction, None, error=f"{outcome.reason}: {outcome.message}", labels=self._labels
            )
        return _joined(row, "judged", prediction, outcome, labels=self._labels, parse=self._parse_verdict)


def _joined(
    row: Row,
    status: RowStatus,
    prediction: ChatResult | None,
    verdict: ChatResult | None,
    *,
    error: str | None = None,
    labels: frozenset[str] = frozenset(),
    parse: VerdictParser | None = None,
) -> JoinedRow:
    text = prediction.content if prediction else None
    answer = text.strip() if text is not None else None
    return JoinedRow(
        row_id=row.row_id,
        index=row.index,
        status=status,
        fields=row.fields,
        labels=row.labels,
        prediction=text,
        prediction_valid=prediction_is_valid(text, labels) if text is not None else None,
        verdict_text=verdict.content if verdict else None,
        verdict=parse(verdict.content) if verdict and parse else None,
        ground_truth_correct=(answer in row.labels) if row.labels is not None and answer is not None else None,
        error=error,
        predict_tokens=prediction.usage if prediction else Usage(),
        judge_tokens=verdict.usage if verdict else Usage(),
        predict_latency_s=prediction.latency_s if prediction else None,
        judge_latency_s=verdict.latency_s if verdict else None,
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
    """Runs every owed row through predict and judge; joined rows go to ``emit``."""

    def __init__(
        self,
        *,
        builder: PromptBuilder,
        join: JoinState,
        predict_runner: RealtimeRunner,
        judge_runner: RealtimeRunner,
        journal: JournalSend,
        emit: ObjectSendStream[JoinedRow],
        stats: LiveStats,
        rows_in_flight: int,
    ) -> None:
        self._builder = builder
        self._join = join
        self._predict = predict_runner
        self._judge = judge_runner
        self._journal = journal
        self._emit = emit
        self._stats = stats
        self._slots = anyio.Semaphore(rows_in_flight)

    async def run(self, owed: Iterator[OwedRow]) -> None:
        """Process every owed row; returns when all are joined (closes ``emit`` and the journal)."""
        async with self._journal, self._emit, anyio.create_task_group() as group:
            for row, records in owed:
                await self._slots.acquire()
                group.start_soon(self._row, row, records.get("predict"), records.get("judge"))

    async def _record(self, stage: Stage, row_id: str, outcome: Outcome) -> None:
        """Journal a paid-for result; shielded, so a cancellation now cannot lose it."""
        with anyio.CancelScope(shield=True):
            await self._journal.send((stage, row_id, outcome))

    async def _row(self, row: Row, predict_record: dict[str, Any] | None, judge_record: dict[str, Any] | None) -> None:
        try:
            if predict_record is not None:
                prediction = record_to_outcome(predict_record)
            elif not any(str(row.fields.get(name) or "").strip() for name in self._builder.text_fields):
                await self._emit.send(skipped_row(row, "empty_input: every field the predict template reads is empty"))
                return
            else:
                prediction = await self._predict.call(self._builder.predict(row))
                await self._record("predict", row.row_id, prediction)
            joined = self._join.prediction(row, prediction)
            if joined is None:
                self._stats.predicted += 1
                assert isinstance(prediction, ChatResult)
                if judge_record is not None:
                    verdict = record_to_outcome(judge_record)
                else:
                    verdict = await self._judge.call(self._builder.judge(row, prediction.content))
                    await self._record("judge", row.row_id, verdict)
                joined = self._join.verdict(row.row_id, verdict)
            await self._emit.send(joined)
        finally:
            self._slots.release()
