"""Predict -> judge wiring, the incremental join, and live counters.

Each owed row gets a task: predict (unless the journal already has it), then judge (unless the
journal already has that too). A row's judge call is issued the moment its prediction exists, so
the two stages overlap. The row carries its prediction with its judge calls (``Row.prediction``),
and ``JoinState`` emits a ``JoinedRow`` the moment every call of a row has its outcome (those of a
row with several wait for the others, keyed by row id). How many rows are in the pipeline at once
is bounded, so memory stays flat on any input size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, MutableMapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from ..journal import Journal, record_to_outcome
from ..judges import Judge, Reading, calls_of
from ..prompts import PromptBuilder, prediction_is_valid
from ..types import ChatResult, Failure, JoinedRow, Outcome, Row, RowStatus, Usage, call_prefix
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


_REMEMBERED_CHARS = 64  # replies at most this long are read once (see ``JoinState._read``) ...
_REMEMBERED_READINGS = 1_024  # ... and this many of them remembered

#: A row's judge calls answered so far, by ``custom_id`` prefix, while its others are out (a
#: panel's judges, or a judge's repeats); its prediction travels with each call (``Row.prediction``).
Pending = dict[str, Outcome]


class JoinState:
    """Turns a prediction and its verdicts into a joined row.

    A row completes when every call of every judge (each of its ``repeats``) has answered or
    failed. A judge's verdict is the strict majority of its repeats' recognised verdicts and its
    score their mean; the row's ``verdict`` is the strict majority of the judges' (None on a tie).
    """

    def __init__(
        self,
        label_set: tuple[str, ...],
        judges: tuple[Judge, ...],
        answer: Callable[[str, str], str] = lambda caller, content: content,
        pending: MutableMapping[str, Pending] | None = None,
    ) -> None:
        """``answer(caller, content)`` reads the answer out of a prediction (a constrained one is
        JSON); ``judges`` are the task's, in panel order, and read their own replies; ``pending``:
        where the answered calls of a row with more than one wait for the others, by row id (a
        dict; ``engine.run.parked.Parked``, on disk, when they wait for judge batches)."""
        self._labels = frozenset(label_set)
        self._judges = judges
        self._calls = {
            call_prefix(judge.prefix, repeat): index
            for index, judge in enumerate(judges)
            for repeat in range(calls_of(judge.config))
        }
        self._kind = judges[0].config.kind
        # One judge asked once (not pairwise): most runs, every row; joined without a panel's lists.
        self._one_call = len(self._calls) == 1 and self._kind != "pairwise"
        self._answer = answer
        self._pending: MutableMapping[str, Pending] = {} if pending is None else pending
        self._readings: dict[tuple[int, str], Reading] = {}

    def __len__(self) -> int:
        """Rows with some of their judge calls answered and others still out."""
        return len(self._pending)

    def prediction(self, row: Row, outcome: Outcome) -> JoinedRow | Row:
        """A failed prediction's joined row (the row is complete); else the row carrying its
        prediction, with its answer read out, for its judge calls to take along."""
        if isinstance(outcome, Failure):
            return _joined(row, None, self._labels, error=f"{outcome.reason}: {outcome.message}")
        answer = self._answer("predict", outcome.content)
        prediction = outcome if answer == outcome.content else replace(outcome, content=answer)
        return row.carrying(prediction)

    def verdict(self, row: Row, outcome: Outcome) -> JoinedRow | None:
        """Record one judge call's outcome for ``row`` (the row the call was made for, carrying
        its prediction); the joined row once every call of the row has one."""
        assert row.prediction is not None, "a judge call is made for a row that carries its prediction"
        if self._one_call:
            return _joined_one_call(row, row.prediction, self._labels, outcome, self._read(0, outcome), self._kind)
        prefix = outcome.custom_id.partition(":")[0]
        if len(self._calls) == 1:
            calls = {prefix: outcome}
        else:
            calls = self._pending.pop(row.row_id, {})
            calls[prefix] = outcome
            if len(calls) < len(self._calls):
                self._pending[row.row_id] = calls  # a store on disk holds a copy: written back
                return None
        return _joined(row, row.prediction, self._labels, verdicts=self._judgements(calls), kind=self._kind)

    def trimmed(self, outcome: Outcome) -> Outcome:
        """A judge call's outcome with only the answer's token logprobs (all a judge reads of
        them): what the journal keeps, instead of a logprob for every token of the reasoning."""
        if not isinstance(outcome, ChatResult) or not outcome.logprobs:
            return outcome
        judge = self._judges[self._calls[outcome.custom_id.partition(":")[0]]]
        return replace(outcome, logprobs=judge.answer_logprobs(outcome.content, outcome.logprobs))

    def _judgements(self, calls: dict[str, Outcome]) -> list[_Judgement]:
        """Each judge's outcomes (in repeat order) and readings of its answered calls."""
        judgements = [_Judgement() for _ in self._judges]
        for prefix, index in self._calls.items():
            outcome, judgement = calls[prefix], judgements[index]
            judgement.outcomes.append(outcome)
            judgement.readings.append(self._read(index, outcome))
        return judgements

    def _read(self, index: int, outcome: Outcome) -> Reading | None:
        """Judge ``index``'s reading of an answered call (None for a failed one). A short reply
        without logprobs (``correct``) is read once and remembered: most replies are one of a few."""
        if not isinstance(outcome, ChatResult):
            return None
        if outcome.logprobs or len(outcome.content) > _REMEMBERED_CHARS:
            return self._judges[index].read(outcome.content, outcome.logprobs)
        key = (index, outcome.content)
        reading = self._readings.get(key)
        if reading is None:
            if len(self._readings) >= _REMEMBERED_READINGS:
                self._readings.clear()
            reading = self._readings[key] = self._judges[index].read(outcome.content)
        return reading


@dataclass(slots=True)
class _Judgement:
    """One judge's calls of a row: an outcome per repeat, and each answered one read."""

    outcomes: list[Outcome] = field(default_factory=list)
    readings: list[Reading | None] = field(default_factory=list)

    @property
    def verdict(self) -> bool | None:
        return majority([reading.verdict if reading else None for reading in self.readings])

    @property
    def score(self) -> float | None:
        scores = [reading.score for reading in self.readings if reading and reading.score is not None]
        return sum(scores) / len(scores) if scores else None

    def mean(self, name: str) -> float | None:
        """The mean of a reading's number (``probability``, ``p_correct``, ``weighted_score``)
        over the calls that have it."""
        values = [value for reading in self.readings if reading and (value := getattr(reading, name)) is not None]
        return sum(values) / len(values) if values else None

    @property
    def winners(self) -> list[str | None]:
        """A pairwise judge's choice in each call, in run letters: ``a`` (the first source's
        answer), ``b`` or ``tie``; the second call had the answers swapped."""
        letters = ({"A": "a", "B": "b", "tie": "tie"}, {"A": "b", "B": "a", "tie": "tie"})
        return [letters[call % 2].get(reading.choice or "") if reading else None for call, reading in enumerate(self.readings)]

    @property
    def winner(self) -> str | None:
        """The judge's winner: its choice when every call named the same one; ``tie`` when the
        calls disagree (the choice changed with the order); None when a call named none."""
        winners = self.winners
        if not winners or any(winner is None for winner in winners):
            return None
        return winners[0] if len(set(winners)) == 1 else "tie"

    @property
    def first(self) -> Reading | None:
        """The first answered call's reading: whose answer and reasoning the row shows."""
        return next((reading for reading in self.readings if reading), None)


def _mean(values: list[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return sum(known) / len(known) if known else None


def plurality(winners: list[str | None]) -> str | None:
    """The winner most judges of a panel named (a tie between them: ``tie``); None with none."""
    named = [winner for winner in winners if winner is not None]
    if not named:
        return None
    counts = {winner: named.count(winner) for winner in named}
    best = max(counts.values())
    leaders = [winner for winner, count in counts.items() if count == best]
    return leaders[0] if len(leaders) == 1 else "tie"


def majority(verdicts: Sequence[bool | None]) -> bool | None:
    """Strict majority of the recognised verdicts; None on a tie or with none recognised."""
    yes = sum(1 for verdict in verdicts if verdict is True)
    no = sum(1 for verdict in verdicts if verdict is False)
    return None if yes == no else yes > no


def _joined(
    row: Row,
    prediction: ChatResult | None,
    labels: frozenset[str],
    *,
    error: str | None = None,
    verdicts: list[_Judgement] | None = None,
    kind: str = "verdict",
) -> JoinedRow:
    judgements = verdicts or []
    text = prediction.content if prediction else None
    answer = text.strip() if text is not None else None
    outcomes = [outcome for judgement in judgements for outcome in judgement.outcomes]
    answers = [outcome for outcome in outcomes if isinstance(outcome, ChatResult)]
    failures = [outcome for outcome in outcomes if isinstance(outcome, Failure)]
    status: RowStatus = "predict_failed" if prediction is None else "judged" if answers else "judge_failed"
    if failures and error is None:
        error = "; ".join(f"{failure.reason}: {failure.message}" for failure in failures)
    latencies = [v.latency_s for v in answers if v.latency_s is not None]
    firsts = [judgement.first for judgement in judgements]
    texts = tuple(first.answer if first else None for first in firsts)
    reasonings = tuple(first.reasoning if first else None for first in firsts)
    scores = tuple(judgement.score for judgement in judgements)
    recognised = [score for score in scores if score is not None]
    scored = kind == "score"
    repeated = kind != "pairwise" and any(len(judgement.readings) > 1 for judgement in judgements)
    winners = [judgement.winner for judgement in judgements] if kind == "pairwise" else []
    judges_verdicts = tuple(judgement.verdict for judgement in judgements)
    readings = [reading for judgement in judgements for reading in judgement.readings] if repeated else []
    return JoinedRow(
        row_id=row.row_id,
        index=row.index,
        status=status,
        fields=row.fields,
        labels=row.labels,
        prediction=text,
        prediction_valid=prediction_is_valid(text, labels) if text is not None and kind != "pairwise" else None,
        verdict_text=" | ".join(text or "" for text in texts) if answers else None,
        verdict=majority(judges_verdicts),
        ground_truth_correct=(answer in row.labels) if row.labels is not None and answer is not None and kind != "pairwise"
        else None,
        error=error,
        predict_tokens=prediction.usage if prediction else Usage(),
        judge_tokens=Usage(sum(v.usage.prompt_tokens for v in answers), sum(v.usage.completion_tokens for v in answers)),
        predict_latency_s=prediction.latency_s if prediction else None,
        judge_latency_s=max(latencies) if latencies else None,
        verdicts=judges_verdicts,
        verdict_texts=texts,
        reasoning=" | ".join(text or "" for text in reasonings) if any(reasonings) else None,
        reasonings=reasonings if any(reasonings) else (),
        score=sum(recognised) / len(recognised) if recognised else None,
        scores=scores if scored else (),
        repeat_verdicts=tuple(reading.verdict if reading else None for reading in readings),
        repeat_scores=tuple(reading.score if reading else None for reading in readings) if scored else (),
        winner=plurality(winners) if winners else None,
        probability=_mean([judgement.mean("probability") for judgement in judgements]),
        p_correct=_mean([judgement.mean("p_correct") for judgement in judgements]),
        weighted_score=_mean([judgement.mean("weighted_score") for judgement in judgements]),
        winners=tuple(winner for judgement in judgements for winner in judgement.winners) if winners else (),
    )


def _joined_one_call(
    row: Row, prediction: ChatResult, labels: frozenset[str], outcome: Outcome, reading: Reading | None, kind: str
) -> JoinedRow:
    """``_joined`` for a single judge asked once (not pairwise), without its lists of one: every
    row of most runs goes through here (a test holds the two to the same rows)."""
    text = prediction.content
    verdict = reading.verdict if reading else None
    answer = reading.answer if reading else None
    reasoning = reading.reasoning if reading else None
    score = reading.score if reading else None
    if isinstance(outcome, ChatResult):
        answered, error = True, None
        judge_tokens, judge_latency_s = Usage(outcome.usage.prompt_tokens, outcome.usage.completion_tokens), outcome.latency_s
    else:
        answered, error = False, f"{outcome.reason}: {outcome.message}"
        judge_tokens, judge_latency_s = Usage(), None
    return JoinedRow(
        row_id=row.row_id,
        index=row.index,
        status="judged" if answered else "judge_failed",
        fields=row.fields,
        labels=row.labels,
        prediction=text,
        prediction_valid=prediction_is_valid(text, labels),
        verdict_text=(answer or "") if answered else None,
        verdict=verdict,
        ground_truth_correct=text.strip() in row.labels if row.labels is not None else None,
        error=error,
        predict_tokens=prediction.usage,
        judge_tokens=judge_tokens,
        predict_latency_s=prediction.latency_s,
        judge_latency_s=judge_latency_s,
        verdicts=(verdict,),
        verdict_texts=(answer,),
        reasoning=reasoning or None,
        reasonings=(reasoning,) if reasoning else (),
        score=score,
        scores=(score,) if kind == "score" else (),
        probability=reading.probability if reading else None,
        p_correct=reading.p_correct if reading else None,
        weighted_score=reading.weighted_score if reading else None,
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
        skip: Callable[[Row], str | None] | None = None,
    ) -> None:
        """``retry_failed``: a journaled failure is tried again whatever its reason (else only
        a transient one is, see ``retry.is_transient``); ``skip(row)``: why a row is skipped
        rather than predicted (None: it is not), besides an empty input."""
        self._builder = builder
        self._join = join
        self._predict = predict
        self._judge = judge
        self._journal = journal
        self._emit = emit
        self._stats = stats
        self._slots = anyio.Semaphore(rows_in_flight)
        self._retry_failed = retry_failed
        self._skip = skip

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
                prefix: record_to_outcome(record)
                for prefix in self._builder.call_prefixes
                if (record := records.get(prefix)) is not None and self._stands(record, row)
            }
            await self._predicted(row, prediction, judged)
        elif not any(str(row.fields.get(name) or "").strip() for name in self._builder.text_fields):
            await self._complete(skipped_row(row, "empty_input: every field the predict template reads is empty"))
        elif self._skip is not None and (reason := self._skip(row)) is not None:
            await self._complete(skipped_row(row, reason))
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

    async def _predicted(self, row: Row, outcome: Outcome, judged: dict[str, Outcome]) -> None:
        """Join the prediction, then make every judge call (by ``custom_id`` prefix) that has no outcome yet."""
        carried = self._join.prediction(row, outcome)
        if isinstance(carried, JoinedRow):
            await self._complete(carried)
            return
        self._stats.predicted += 1
        assert carried.prediction is not None
        answer = carried.prediction.content  # read out of the reply by the join
        joined = None
        for prefix, (index, repeat) in self._builder.calls.items():
            if prefix in judged:
                joined = self._join.verdict(carried, judged[prefix])
            else:
                await self._judge.submit(carried, self._builder.judge(carried, answer, index, repeat))
        if joined is not None:
            await self._complete(joined)

    async def _on_verdict(self, row: Row, outcome: Outcome) -> None:
        outcome = self._join.trimmed(outcome)
        self._journal.append("judge", row, outcome)
        joined = self._join.verdict(row, outcome)
        if joined is not None:
            await self._complete(joined)

    async def _complete(self, joined: JoinedRow) -> None:
        await streams.send(self._emit, joined)
        self._slots.release()
