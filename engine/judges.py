"""What a judge is: one object per judge of a task, which the pipeline asks everything it needs.

A judge kind (the ``Judge`` protocol) says:

- ``prefix``: its ``custom_id`` prefix, the key of its journal records and its column of a
  panel's votes (``judge`` alone, ``judge.<name>`` in a panel);
- ``messages(row, prediction)``: its request for a row and the prediction (the pipeline adds the
  model, its parameters and the structured-output format), and ``fields``, the data set's
  columns those messages read;
- ``choices``: what a constrained reply chooses from (None: the reply is free text);
- ``verdict(answer)``: the reply's answer parsed into a verdict (None: not recognised);
- ``COLUMNS``: the ``results.parquet`` columns its verdicts fill (``engine.results``), which
  ``engine.report.metrics`` reads.

``VerdictJudge`` (correct / incorrect) is the first kind; ``judges_for`` builds a task's judges.
A new kind (a rubric score, a pairwise preference) is a class implementing ``Judge``, its name
in the judge config, and its metrics beside the verdict kind's.
"""

from __future__ import annotations

from typing import ClassVar, Protocol

import polars as pl

from .config import JudgeConfig, TaskConfig, VerdictConfig
from .templates import Templates
from .types import Row

#: Fields a judge template may use besides the row's own columns.
JUDGE_EXTRA_FIELDS = ("prediction", "labels")


class Judge(Protocol):
    """One judge of a task (see the module doc)."""

    prefix: str
    config: JudgeConfig
    COLUMNS: ClassVar[dict[str, pl.DataType]]

    @property
    def fields(self) -> tuple[str, ...]: ...

    @property
    def choices(self) -> tuple[str, ...] | None: ...

    def messages(self, row: Row, prediction: str) -> list[dict[str, str]]: ...

    def verdict(self, answer: str) -> bool | None: ...


class VerdictJudge:
    """A judge that answers whether the prediction is correct, in one of its verdict words."""

    COLUMNS: ClassVar[dict[str, pl.DataType]] = {
        "verdict_text": pl.String(),  # the judges' replies, joined by " | "
        "verdict": pl.Boolean(),  # the strict majority of the recognised verdicts
        "verdicts": pl.List(pl.Boolean()),  # each judge's, in panel order
        "verdict_texts": pl.List(pl.String()),
    }

    def __init__(self, config: JudgeConfig, prefix: str, templates: Templates, labels: tuple[str, ...]) -> None:
        self.config = config
        self.prefix = prefix
        self._templates = templates
        self._labels_text = ", ".join(labels)
        self._parse = VerdictParser(config.verdicts)

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(name for name in self._templates.fields if name not in JUDGE_EXTRA_FIELDS)

    @property
    def choices(self) -> tuple[str, ...] | None:
        verdicts = self.config.verdicts
        return verdicts.correct + verdicts.incorrect if self.config.constrain else None

    def messages(self, row: Row, prediction: str) -> list[dict[str, str]]:
        return self._templates.messages({**row.fields, "labels": self._labels_text, "prediction": prediction})

    def verdict(self, answer: str) -> bool | None:
        return self._parse(answer)


def judges_for(config: TaskConfig, columns: list[str]) -> tuple[Judge, ...]:
    """The task's judges, in panel order, their templates checked against the data set's columns."""
    return tuple(
        VerdictJudge(
            judge,
            prefix,
            Templates.of(
                judge, "judge." if judge.name is None else f"judge {judge.name}: ", columns, JUDGE_EXTRA_FIELDS,
                config.where,
            ),
            config.labels,
        )
        for prefix, judge in zip(judge_prefixes(config), config.judges, strict=True)
    )


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
