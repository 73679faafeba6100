"""What a judge is: one object per judge of a task, which the pipeline asks everything it needs.

A judge kind (the ``Judge`` protocol) says:

- ``prefix``: its ``custom_id`` prefix, the key of its journal records and its column of a
  panel's votes (``judge`` alone, ``judge.<name>`` in a panel);
- ``messages(row, prediction)``: its request for a row and the prediction (the pipeline adds the
  model, its parameters and the structured-output format), and ``fields``, the data set's
  columns those messages read;
- ``response_format``: the JSON schema a constrained reply follows (None: free text);
- ``read(content, logprobs)``: the reply as a ``Reading`` (its answer, reasoning, verdict,
  score, and with token logprobs the answer's probability); ``answer_logprobs`` keeps of the
  reply's logprobs only the answer's token, which is what the journal records.

Kinds: ``VerdictJudge`` (correct / incorrect) and ``ScoreJudge`` (an integer on a scale, against
a rubric). A reasoning judge (and every score judge) is told to end its reply with a final line,
``VERDICT: correct`` or ``SCORE: 4``; the answer is the *last* such line, so reasoning that quotes
a verdict cannot decide it. A constrained one answers a JSON object with ``reasoning`` first.
``judges_for`` builds a task's judges.
"""

from __future__ import annotations

import json
import math
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Protocol

import polars as pl

from .config import JudgeConfig, TaskConfig, VerdictConfig
from .formats import REASON, choice_format, final_line, json_schema_format
from .templates import Templates
from .types import Row, TokenLogprob

#: Fields a judge template may use besides the row's own columns (``reference`` with a
#: ``dataset.reference_column``; ``task``, ``answer_a`` and ``answer_b`` in a pairwise judge's).
JUDGE_EXTRA_FIELDS = ("prediction", "labels", "reference", "rubric", "task", "answer_a", "answer_b")
PAIRWISE_FIELDS = ("task", "answer_a", "answer_b")
#: A pairwise judge's choices: the answer in the first position, the second, or neither.
PAIRWISE_CHOICES = ("A", "B", "tie")

#: The ``results.parquet`` columns the judges fill (``engine.results``), which
#: ``engine.report.metrics`` reads. The plural columns hold each judge's, in panel order.
JUDGE_COLUMNS: dict[str, pl.DataType] = {
    "verdict_text": pl.String(),  # the judges' answers, joined by " | "
    "verdict": pl.Boolean(),  # the strict majority of the recognised verdicts (a score judge's: passed)
    "verdicts": pl.List(pl.Boolean()),
    "verdict_texts": pl.List(pl.String()),
    "reasoning": pl.String(),  # the judges' reasoning, joined by " | " (null without any)
    "reasonings": pl.List(pl.String()),
    "score": pl.Float64(),  # score judges: the mean of the recognised scores
    "scores": pl.List(pl.Float64()),
    "winner": pl.String(),  # pairwise: "a" (the first run's answer), "b" or "tie"
    "winners": pl.List(pl.String()),  # each call's, in run letters: first order, then swapped
    "probability": pl.Float64(),  # logprobs: the probability of the judges' answers (their mean)
    "p_correct": pl.Float64(),  # verdict judges: the probability of "correct" that implies
    "weighted_score": pl.Float64(),  # score judges: the probability-weighted score (G-Eval)
}

@dataclass(frozen=True, slots=True)
class Reading:
    """One judge reply, read: ``answer`` as the judge wrote it (None when it wrote none),
    ``reasoning`` (None without), ``verdict`` (correct/incorrect; a score judge's: passed, None
    without ``pass_at``), ``score`` (score judges; None when not a score on the scale) and
    ``choice`` (pairwise judges: ``A``, ``B`` or ``tie`` by position; None when none of them).
    From token logprobs (``judge.logprobs``): ``probability`` of the answer, ``p_correct`` (verdict
    judges) and ``weighted_score`` (score judges); None without them."""

    answer: str | None
    reasoning: str | None = None
    verdict: bool | None = None
    score: float | None = None
    choice: str | None = None
    probability: float | None = None
    p_correct: float | None = None
    weighted_score: float | None = None


class Judge(Protocol):
    """One judge of a task (see the module doc)."""

    prefix: str
    config: JudgeConfig

    @property
    def fields(self) -> tuple[str, ...]: ...

    @property
    def response_format(self) -> dict[str, Any] | None: ...

    def messages(self, row: Row, prediction: str) -> list[dict[str, str]]: ...

    def read(self, content: str, logprobs: tuple[TokenLogprob, ...] | None = None) -> Reading: ...

    def answer_logprobs(self, content: str, logprobs: tuple[TokenLogprob, ...] | None) -> tuple[TokenLogprob, ...] | None: ...


class _FinalLineJudge(ABC):
    """What the kinds share: templates, the appended instruction, and reading the final line."""

    marker = ""
    slot = ""
    key = ""  # the answer's property in a constrained reply

    def __init__(self, config: JudgeConfig, prefix: str, templates: Templates, labels: tuple[str, ...],
                 reference_column: str | None = None) -> None:
        self.config = config
        self.prefix = prefix
        self._templates = templates
        self._labels_text = ", ".join(labels)
        self._reference_column = reference_column
        self._instruction = self._instructions()

    @property
    def fields(self) -> tuple[str, ...]:
        fields = [name for name in self._templates.fields if name not in JUDGE_EXTRA_FIELDS]
        if "reference" in self._templates.fields and self._reference_column:
            fields.append(self._reference_column)
        return tuple(fields)

    @property
    def _asks_final_line(self) -> bool:
        """Whether the reply ends with a final answer line (else it is the bare answer)."""
        return self.config.reasoning

    @abstractmethod
    def _what(self) -> str:
        """What the final line's answer is, in words (``one of: correct, incorrect``)."""

    def _instructions(self) -> str:
        """What is appended to the user message: the reasoning request and the final line (for a
        constrained judge only the reasoning request: the schema says the rest)."""
        parts = [REASON] if self.config.reasoning else []
        if self._asks_final_line and not self.config.constrain:
            parts.append(final_line(self.marker, self.slot, self._what()))
        return " ".join(parts)

    @abstractmethod
    def _schema(self) -> dict[str, Any]:
        """The JSON schema of the answer property of a constrained reply."""

    @abstractmethod
    def read(self, content: str, logprobs: tuple[TokenLogprob, ...] | None = None) -> Reading:
        """The reply, read (see ``Reading``)."""

    @property
    def response_format(self) -> dict[str, Any] | None:
        if not self.config.constrain:
            return None
        properties = {"reasoning": {"type": "string"}} if self.config.reasoning else {}
        properties[self.key] = self._schema()
        schema = {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}
        return json_schema_format(schema)

    def _values(self, row: Row, prediction: str) -> dict[str, Any]:
        values = {**row.fields, "labels": self._labels_text, "prediction": prediction, "rubric": self.config.rubric}
        if self._reference_column:
            values["reference"] = row.fields.get(self._reference_column)
        return values

    def messages(self, row: Row, prediction: str) -> list[dict[str, str]]:
        """The templates' messages with the instruction appended: to the user message, or with
        ``cache`` to the system prompt, which every row shares (a provider caches a shared prefix)."""
        messages = self._templates.messages(self._values(row, prediction))
        if not self._instruction:
            return messages
        if self.config.cache:
            if messages[0]["role"] == "system":
                first, *rest = messages
                return [{**first, "content": f"{first['content'].rstrip()}\n\n{self._instruction}"}, *rest]
            return [{"role": "system", "content": self._instruction}, *messages]
        *earlier, last = messages
        return [*earlier, {**last, "content": f"{last['content'].rstrip()}\n\n{self._instruction}"}]

    def _answer(self, content: str) -> tuple[str | None, str | None, int]:
        """The reply's answer, its reasoning and the answer's offset: from a JSON object (a
        constrained reply), else the last final line and the text before it, else the whole reply."""
        return read_reply(content, self.marker, self.key)

    def answer_logprobs(self, content: str, logprobs: tuple[TokenLogprob, ...] | None) -> tuple[TokenLogprob, ...] | None:
        """Of a reply's token logprobs, the answer's token alone (what ``read`` needs of them, and
        what the journal keeps); None when the reply has none or they do not spell it."""
        if not logprobs:
            return None
        token = answer_token(logprobs, self._answer(content)[2])
        return None if token is None else (token,)

    def _probability(self, content: str, logprobs: tuple[TokenLogprob, ...] | None) -> TokenLogprob | None:
        kept = self.answer_logprobs(content, logprobs) if logprobs and len(logprobs) > 1 else logprobs
        return kept[0] if kept else None


class VerdictJudge(_FinalLineJudge):
    """A judge that answers whether the prediction is correct, in one of its verdict words."""

    marker, slot, key = "VERDICT", "verdict", "verdict"

    def __init__(self, config: JudgeConfig, prefix: str, templates: Templates, labels: tuple[str, ...],
                 reference_column: str | None = None) -> None:
        super().__init__(config, prefix, templates, labels, reference_column)
        self._parse = VerdictParser(config.verdicts)

    def _choices(self) -> tuple[str, ...]:
        return self.config.verdicts.correct + self.config.verdicts.incorrect

    def _what(self) -> str:
        return "one of: " + ", ".join(self._choices())

    def _schema(self) -> dict[str, Any]:
        return {"type": "string", "enum": list(self._choices())}

    @property
    def response_format(self) -> dict[str, Any] | None:
        if self.config.constrain and not self.config.reasoning:
            return choice_format(self._choices())  # one word: ``{"answer": "correct"}``
        return super().response_format

    def read(self, content: str, logprobs: tuple[TokenLogprob, ...] | None = None) -> Reading:
        """With ``logprobs``: the answer's probability (of its first token), and the probability
        of ``correct`` it implies (the verdict's probability, or its complement)."""
        answer, reasoning, _ = self._answer(content)
        verdict = None if answer is None else self._parse(answer)
        token = self._probability(content, logprobs)
        if token is None or verdict is None:
            return Reading(answer, reasoning, verdict)
        probability = math.exp(token.logprob)
        return Reading(answer, reasoning, verdict, probability=probability,
                       p_correct=probability if verdict else 1.0 - probability)


class ScoreJudge(_FinalLineJudge):
    """A judge that scores the prediction with an integer on ``scale`` against a rubric; it
    passes at ``pass_at`` (without one, a score judge gives no verdict)."""

    marker, slot, key = "SCORE", "score", "score"

    @property
    def _asks_final_line(self) -> bool:
        return True

    def _what(self) -> str:
        low, high = self.config.scale
        return f"an integer from {low} to {high}"

    def _instructions(self) -> str:
        rubric = self.config.rubric
        rest = super()._instructions()
        if rubric and "rubric" not in self._templates.fields:
            return f"Rubric:\n{rubric.strip()}" + (f"\n\n{rest}" if rest else "")
        return rest

    def _schema(self) -> dict[str, Any]:
        low, high = self.config.scale
        return {"type": "integer", "minimum": low, "maximum": high}

    def read(self, content: str, logprobs: tuple[TokenLogprob, ...] | None = None) -> Reading:
        """With ``logprobs``: the score's probability, and the probability-weighted score over
        the alternatives at its position that are scores on the scale (G-Eval's score)."""
        answer, reasoning, _ = self._answer(content)
        score = self.score(answer)
        passed = None if score is None or self.config.pass_at is None else score >= self.config.pass_at
        token = self._probability(content, logprobs)
        if token is None or score is None:
            return Reading(answer, reasoning, passed, score)
        weights: dict[float, float] = {score: math.exp(token.logprob)}
        for text, logprob in token.top:
            value = self.score(text)
            if value is not None:
                weights.setdefault(value, math.exp(logprob))
        weighted = sum(value * weight for value, weight in weights.items()) / sum(weights.values())
        return Reading(answer, reasoning, passed, score, probability=math.exp(token.logprob), weighted_score=weighted)

    def score(self, answer: str | None) -> float | None:
        """The integer an answer gives (``4``, ``4/5``, ``**4**``, ``4.0``), if it is on the scale."""
        match = _SCORE.match(answer or "")
        if match is None:
            return None
        value = float(match.group(1))
        low, high = self.config.scale
        return value if value.is_integer() and low <= value <= high else None


class PairwiseJudge(_FinalLineJudge):
    """A judge that says which of two answers to the row is better: the one in the first
    position (``A``), the second (``B``) or neither (``tie``). The prediction it reads is the pair
    as a JSON array (``engine.prior``); ``{task}`` is the predict stage's request for the row."""

    marker, slot, key = "WINNER", "winner", "winner"

    def __init__(self, config: JudgeConfig, prefix: str, templates: Templates, labels: tuple[str, ...],
                 reference_column: str | None = None, task: Templates | None = None) -> None:
        super().__init__(config, prefix, templates, labels, reference_column)
        self._task = task

    @property
    def _asks_final_line(self) -> bool:
        return True

    def _what(self) -> str:
        return "one of: " + ", ".join(PAIRWISE_CHOICES)

    def _schema(self) -> dict[str, Any]:
        return {"type": "string", "enum": list(PAIRWISE_CHOICES)}

    def _values(self, row: Row, prediction: str) -> dict[str, Any]:
        first, second = json.loads(prediction)
        task = "" if self._task is None else self._task.messages({**row.fields, "labels": self._labels_text})[-1]["content"]
        return {**super()._values(row, prediction), "answer_a": first, "answer_b": second, "task": task}

    def read(self, content: str, logprobs: tuple[TokenLogprob, ...] | None = None) -> Reading:
        answer, reasoning, _ = self._answer(content)
        wanted = normalise(answer or "")
        choice = next((choice for choice in PAIRWISE_CHOICES if normalise(choice) == wanted), None)
        token = self._probability(content, logprobs) if choice is not None else None
        return Reading(answer, reasoning, choice=choice, probability=None if token is None else math.exp(token.logprob))


_SCORE = re.compile(r"^[\s*_`\"']*(-?\d+(?:\.0+)?)(?:\s*/\s*\d+)?[\s*_`\"'.]*$")


def read_reply(content: str, marker: str, key: str) -> tuple[str | None, str | None, int]:
    """A judge reply's answer, its reasoning and where in ``content`` the answer starts (see
    ``_FinalLineJudge._answer``)."""
    stripped = content.strip()
    if stripped.startswith("{"):
        try:
            value = json.loads(stripped)
        except ValueError:
            value = None
        if isinstance(value, dict):
            answer = value.get(key, value.get("answer"))
            reasoning = value.get("reasoning")
            text = None if answer is None else str(answer)
            return text, (reasoning if isinstance(reasoning, str) else None), content.rfind(text) if text else -1
    lines = content.splitlines(keepends=True)
    pattern = _final_line_pattern(marker)
    for index in range(len(lines) - 1, -1, -1):
        match = pattern.match(lines[index].rstrip("\r\n"))
        if match:
            start = sum(map(len, lines[:index])) + match.start(1)
            return match.group(1).strip(), "".join(lines[:index]).strip() or None, start
    return stripped, None, len(content) - len(content.lstrip())


def answer_token(logprobs: tuple[TokenLogprob, ...], offset: int) -> TokenLogprob | None:
    """The token of a reply that holds the character at ``offset`` (the answer's first), when
    the tokens spell the reply."""
    if offset < 0:
        return None
    position = 0
    for token in logprobs:
        position += len(token.token)
        if position > offset:
            return token
    return None


_PATTERNS: dict[str, re.Pattern[str]] = {}


def _final_line_pattern(marker: str) -> re.Pattern[str]:
    """``VERDICT: correct``, tolerating markdown around the marker (``**VERDICT:** correct``)."""
    pattern = _PATTERNS.get(marker)
    if pattern is None:
        pattern = _PATTERNS[marker] = re.compile(rf"^[\s*_#>`-]*{marker}[\s*_`]*:[\s*_`]*(.+?)[\s*_`]*$", re.IGNORECASE)
    return pattern


def judges_for(config: TaskConfig, columns: list[str]) -> tuple[Judge, ...]:
    """The task's judges, in panel order, their templates checked against the data set's columns."""
    reference = config.dataset.reference_column
    pairwise = config.judge_kind == "pairwise"
    extra = tuple(
        name for name in JUDGE_EXTRA_FIELDS
        if (name != "reference" or reference) and (name not in PAIRWISE_FIELDS or pairwise)
    )
    judges: list[Judge] = []
    for prefix, judge in zip(judge_prefixes(config), config.judges, strict=True):
        name = "judge." if judge.name is None else f"judge {judge.name}: "
        templates = Templates.of(judge, name, columns, extra, config.where)
        if judge.kind == "pairwise":
            task = Templates.of(config.predict, "predict.", columns, ("labels",), config.where)
            judges.append(PairwiseJudge(judge, prefix, templates, config.labels, reference, task))
        elif judge.kind == "score":
            judges.append(ScoreJudge(judge, prefix, templates, config.labels, reference))
        else:
            judges.append(VerdictJudge(judge, prefix, templates, config.labels, reference))
    return tuple(judges)


def calls_of(config: JudgeConfig) -> int:
    """How many calls a judge makes per row: one per repeat; a pairwise judge with ``swap``
    two, the second with the answers swapped."""
    return 2 if config.kind == "pairwise" and config.swap else config.repeats


def judge_prefixes(config: TaskConfig) -> tuple[str, ...]:
    """The ``custom_id`` prefix of each judge: ``judge`` alone, ``judge.<name>`` in a panel."""
    if len(config.judges) == 1:
        return ("judge",)
    return tuple(f"judge.{judge.name}" for judge in config.judges)


def judge_index(custom_id: str, prefixes: tuple[str, ...]) -> int:
    """Which judge of the panel an outcome's ``custom_id`` belongs to."""
    return prefixes.index(custom_id.partition(":")[0])


def normalise(text: str) -> str:
    """Case, surrounding whitespace, quotes and backticks, and one final full stop (inside or
    outside the quotes) do not matter; ``correct...`` keeps its dots (an ellipsis is not a full stop)."""
    text = text.strip()
    stopped = text.endswith(".")
    text = text.removesuffix(".").strip().strip("\"'`").strip()
    if not stopped:
        text = text.removesuffix(".").strip()
    return text.lower()


class VerdictParser:
    """Maps judge text to True (correct), False (incorrect) or None (not recognised)."""

    def __init__(self, config: VerdictConfig) -> None:
        self._map = {normalise(text): True for text in config.correct}
        self._map.update({normalise(text): False for text in config.incorrect})

    def __call__(self, text: str) -> bool | None:
        return self._map.get(normalise(text))
