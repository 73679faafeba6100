"""Predictions taken from finished runs: what re-judging and pairwise comparison judge.

``engine judge RUN_DIR`` judges the predictions of an earlier run again (a new judge, a panel, a
score judge) and ``engine judge --pairwise RUN_A RUN_B`` judges, row by row, which of two runs
answered better; neither sends a predict request. ``Sources`` names the runs (``run.json``
records them, so the new run resumes like any other) and reads their predictions;
``PriorPredictions`` is the predict stage that answers each row from them, at no cost. A row
without a prediction in every source is skipped, with the reason.

A pairwise run's prediction is the pair as a JSON array ``[answer of A, answer of B]``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import polars as pl
from anyio.abc import TaskStatus

from .config import TaskConfig, parse_config, read_toml
from .errors import ConfigError
from .run.stage import Deliver
from .rundir import RunDir
from .types import ChatRequest, ChatResult, Row, Usage

NO_PREDICTION = "no_prediction"


@dataclass(frozen=True, slots=True)
class Sources:
    """The finished runs whose predictions a run judges: one (re-judging) or two (pairwise)."""

    runs: tuple[Path, ...]

    def __post_init__(self) -> None:
        if len(self.runs) not in (1, 2):
            raise ValueError(f"re-judging reads one run, a pairwise comparison two; got {len(self.runs)}")

    @property
    def pairwise(self) -> bool:
        return len(self.runs) == 2

    def to_json(self) -> list[str]:
        return [str(run.resolve()) for run in self.runs]

    @classmethod
    def from_json(cls, runs: list[str]) -> Sources:
        return cls(tuple(Path(run) for run in runs))

    def predictions(self) -> dict[str, str]:
        """Row id -> what the judge reads: the prediction, or the pair as a JSON array; only the
        rows with a prediction in every source."""
        frames = [_predictions(RunDir(run)) for run in self.runs]
        if not self.pairwise:
            frame = frames[0]
            return dict(zip(frame["row_id"].to_list(), frame["prediction"].to_list(), strict=True))
        pairs = frames[0].join(frames[1], on="row_id", suffix="_b")
        return {
            row_id: json.dumps([a, b], ensure_ascii=False)
            for row_id, a, b in zip(pairs["row_id"], pairs["prediction"], pairs["prediction_b"], strict=True)
        }

    def model(self) -> str:
        """The model that made the predictions: what each source's ``metrics.json`` says it
        served (else the model it asked for); a pair's as ``A | B``."""
        return " | ".join(_served(RunDir(run)) for run in self.runs)


def _served(run_dir: RunDir) -> str:
    try:
        models = json.loads(run_dir.metrics_file.read_text(encoding="utf-8"))["models"]["predict"]
    except (OSError, ValueError, KeyError, TypeError):
        return run_dir.config().predict.model
    return ", ".join(models.get("served") or []) or str(models.get("requested"))


def _predictions(run_dir: RunDir) -> pl.DataFrame:
    """The run's predictions (rows whose predict call succeeded) by row id; a clear error when
    the directory is not a finished run."""
    if not run_dir.results_file.exists():
        raise ConfigError(
            f"{run_dir.path}: no {run_dir.results_file.name}: judge a finished run "
            f"(finish this one with: python -m engine run --resume {run_dir.path})"
        )
    return (
        pl.scan_parquet(run_dir.results_file)
        .select("row_id", "prediction")
        .filter(pl.col("prediction").is_not_null())
        .collect()
    )


def missing_prediction(sources: Sources, predictions: dict[str, str]) -> Callable[[Row], str | None]:
    """Why a row is skipped (no prediction in a source), or None when it has its prediction."""
    runs = " and ".join(str(run) for run in sources.runs)
    reason = f"{NO_PREDICTION}: {runs} {'do' if sources.pairwise else 'does'} not hold a prediction of this row"
    return lambda row: None if row.row_id in predictions else reason


class PriorPredictions:
    """A predict stage (``engine.run.stage.Stage``) that sends nothing: each request is answered
    with the row's prediction from the source runs, with no tokens and no latency."""

    def __init__(self, predictions: dict[str, str], model: str) -> None:
        self._predictions = predictions
        self._model = model
        self._send, self._receive = anyio.create_memory_object_stream[tuple[Row, ChatRequest]](64)

    async def run(self, deliver: Deliver, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        with self._send, self._receive:  # both closed however the run ends, a cancelled one too
            task_status.started()
            async for row, request in self._receive:
                await deliver(row, self._answer(request))

    def _answer(self, request: ChatRequest) -> ChatResult:
        return ChatResult(request.custom_id, self._predictions[request.row_id], self._model, Usage(), None, attempts=0)

    async def submit(self, row: Row, request: ChatRequest) -> None:
        await self._send.send((row, request))

    async def flush(self) -> None:
        """Nothing waits: every submission is answered as it comes."""

    async def close(self) -> None:
        self._send.close()


#: The pairwise judge used without a judge file: MT-Bench's layout (the answers between
#: start and end lines), the task as the base model was asked it.
DEFAULT_PAIRWISE_JUDGE: dict[str, Any] = {
    "kind": "pairwise",
    "system_prompt": "You are an impartial judge. You compare two AI assistants' answers to the same task.",
    "user_template": (
        "[The Task]\n{task}\n\n[The Start of Answer A]\n{answer_a}\n[The End of Answer A]\n\n"
        "[The Start of Answer B]\n{answer_b}\n[The End of Answer B]\n\n"
        "Which answer fulfils the task better? Judge the content only: neither the order of the answers nor their "
        "length may sway you."
    ),
    "max_tokens": 16,
}
#: What a judge file may set besides the judge: where and how the judge calls go.
JUDGE_FILE_TABLES = ("name", "endpoint", "prices", "batch", "local")


def judging_config(sources: Sources, judge_file: Path | None = None) -> TaskConfig:
    """The config of a run that judges the sources' predictions: the first source's task (its
    data set and predict stage: what the predictions answer) with the judge of ``judge_file`` (a
    TOML file with a ``[judge]`` table or a ``[[judge]]`` panel, and optionally ``name``,
    ``[endpoint]``, ``[prices]``, ``[batch]``, ``[local]``; a whole task file serves) in place of
    its own. Without a file: the source's own judge again, or for a pairwise comparison
    ``DEFAULT_PAIRWISE_JUDGE`` on the first source's judge model. No predict call is made."""
    first = RunDir(sources.runs[0]).config()
    data = first.model_dump()
    source = f"{sources.runs[0].name}/run.json"
    table: dict[str, Any] = {}
    if judge_file is not None:
        table = _judge_table(judge_file)
        data["judge"] = table["judge"]
        for key in JUDGE_FILE_TABLES:
            if key in table:
                data[key] = table[key] if not isinstance(table[key], dict) else {**data.get(key, {}), **table[key]}
        source = judge_file.name
    elif sources.pairwise:
        judge = first.judges[0]
        data["judge"] = {**DEFAULT_PAIRWISE_JUDGE, "model": judge.model, "mode": judge.mode}
    if "name" not in table:
        data["name"] = f"{first.name}-{'pairwise' if sources.pairwise else 'judged'}"
    data["predict"] = {**data["predict"], "mode": "realtime"}
    config = parse_config(data, source=source, base_dir=Path.cwd())
    if sources.pairwise != (config.judge_kind == "pairwise"):
        wanted = "a judge of kind = \"pairwise\"" if sources.pairwise else "a verdict or score judge"
        raise ConfigError(f"{source}: judge: comparing {len(sources.runs)} run(s) needs {wanted}")
    return config


def _judge_table(path: Path) -> dict[str, Any]:
    table = read_toml(path, "judge file")
    if "judge" not in table:
        raise ConfigError(f"{path}: no [judge] table (or [[judge]] panel): it says which judge to run")
    return table
