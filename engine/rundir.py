"""The run directory: where a run's config, journal, results and metrics live, and who holds it.

``RunDir`` is the one place that knows its paths, and reads a run out of it:

    runs/<run-id>/run.json                the resolved config (no secrets: only the key's variable
                                          name) and the settings its results depend on
    runs/<run-id>/.lock                   held (flock) by the one process running in the directory
    runs/<run-id>/journal/<stage>.ndjson  append-only outcomes per stage (predict, judge)
    runs/<run-id>/journal/batches.ndjson  every batch file and batch the moment it exists, and its end
    runs/<run-id>/journal/sessions.ndjson when each session of the run started and ended
    runs/<run-id>/batches/                batch request files and their downloaded results
    runs/<run-id>/server/                 the embedded server's files and batches
    runs/<run-id>/.scratch/               rows parked while they wait for batches; removed when the session ends
    runs/<run-id>/results.parts/          results written so far, merged at the end into
    runs/<run-id>/results.parquet         one row per data row
    runs/<run-id>/metrics.json            the numbers
    runs/<run-id>/report.md, report.html, plots/

A resumed run may change how it reaches the endpoint (base URL, key variable, concurrency,
limits, timeouts), its mode, its prices and its batch settings, and may extend its row limit;
a change to anything its results depend on (``results_settings``) is refused, naming it.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from .config import JudgeConfig, TaskConfig
from .errors import ConfigError, JournalError, RunInUseError
from .types import StageName

_SELECTION = ("id_column", "label_column", "label_separator", "head", "tail", "sample", "seed")


def new_run_dir(root: Path, task_name: str) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in task_name) or "task"
    return root / f"{safe}-{stamp}-{secrets.token_hex(2)}"


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write atomically: a crash leaves the old file or the new one, never half of one."""
    temporary = path.with_suffix(path.suffix + ".tmp")
    try:
        temporary.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
        os.replace(temporary, path)
    except OSError as exc:
        raise JournalError(f"cannot write {path}: {exc.strerror or exc}") from exc


class RunDir:
    """A run directory's paths, and the run read from it (see the module doc for the layout)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.run_file = self.path / "run.json"
        self.lock_file = self.path / ".lock"
        self.metrics_file = self.path / "metrics.json"
        self.results_file = self.path / "results.parquet"
        self.results_parts = self.path / "results.parts"
        self.journal_dir = self.path / "journal"
        self.batch_events = self.journal_dir / "batches.ndjson"
        self.session_events = self.journal_dir / "sessions.ndjson"
        self.batches_dir = self.path / "batches"
        #: One session's disposable files (rows waiting for batches: ``engine.run.parked``).
        self.scratch_dir = self.path / ".scratch"
        self.server_dir = self.path / "server"
        self.plots_dir = self.path / "plots"
        self.report_md = self.path / "report.md"
        self.report_html = self.path / "report.html"

    def __str__(self) -> str:
        return str(self.path)

    def journal(self, stage: StageName) -> Path:
        """The stage's journal of outcomes."""
        return self.journal_dir / f"{stage}.ndjson"

    @property
    def is_run(self) -> bool:
        """Whether a run lives here (its ``run.json`` is written)."""
        return self.run_file.exists()

    def info(self) -> dict[str, Any]:
        """``run.json`` as ``write_run`` wrote it."""
        try:
            data = json.loads(self.run_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{self.path}: not a run directory (no {self.run_file.name})") from None
        except ValueError as exc:
            raise ConfigError(f"{self.run_file}: unreadable: {exc}") from None
        if not isinstance(data, dict) or "config" not in data:
            raise ConfigError(f"{self.run_file}: not a run file (no config)")
        return data

    def config(self, info: dict[str, Any] | None = None) -> TaskConfig:
        """The config the run was last started or resumed with (from ``info``, if read already)."""
        try:
            return TaskConfig.model_validate((info or self.info())["config"]).with_source(str(self.run_file))
        except ConfigError:
            raise
        except Exception as exc:  # pydantic's ValidationError: the file was edited
            raise ConfigError(f"{self.run_file}: config does not validate: {exc}") from None

    def load(self) -> FinishedRun:
        """The finished run, read once: what reports and comparisons read."""
        info = self.info()
        try:
            metrics = json.loads(self.metrics_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(
                f"{self.path}: the run has not finished (no {self.metrics_file.name}); "
                f"finish it with: python -m engine run --resume {self.path}"
            ) from None
        except ValueError as exc:
            raise ConfigError(f"{self.metrics_file}: unreadable: {exc}") from None
        return FinishedRun(self, info, self.config(info), metrics, pl.scan_parquet(self.results_file))

    def claim(self, *, resume: bool) -> RunLock:
        """Lock the directory (made for a new run); a new run where one lives already, or a
        resume where none lives, is an error."""
        if resume and not self.is_run:
            raise ConfigError(f"{self.path}: not a run directory (no {self.run_file.name})")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise JournalError(f"cannot create the run directory {self.path}: {exc.strerror or exc}") from exc
        lock = RunLock(self)
        lock.acquire()
        if not resume and self.is_run:
            lock.release()
            raise ConfigError(f"{self.path}: a run lives here already; resume it with --resume {self.path}")
        return lock

    def write_run(
        self, config: TaskConfig, *, endpoint: str, started: dict[str, Any] | None = None, sources: list[str] | None = None
    ) -> None:
        """Write ``run.json``: from now on the directory is a run that ``--resume`` can finish.

        ``started`` is the ``run.json`` of the run's first session, when this is a later one: its
        creation time and the settings its results depend on are kept; the config is this session's.
        ``sources``: the runs whose predictions this one judges (``engine.prior``), if any.
        """
        write_json(
            self.run_file,
            {
                "run_id": self.path.name,
                "created_at": started["created_at"] if started else datetime.now(UTC).isoformat(),
                "endpoint": endpoint,
                "config": config.model_dump(mode="json"),
                "results_settings": started["results_settings"] if started else results_settings(config),
                **({"sources": sources} if sources else {}),
            },
        )


@dataclass(frozen=True, slots=True)
class FinishedRun:
    """A finished run as read from its directory: ``run.json`` (``info``) and its config, the
    metrics, and the results as a lazy frame."""

    dir: RunDir
    info: dict[str, Any]
    config: TaskConfig
    metrics: dict[str, Any]
    results: pl.LazyFrame

    @property
    def run_id(self) -> str:
        return str(self.info["run_id"])


class RunLock:
    """An exclusive ``flock`` on ``<run_dir>/.lock`` for the life of a run.

    Two processes on one run directory would both send every owed row (paid twice) and write the
    same files. The kernel drops the lock when its process dies, however it dies, so the lock file
    a killed run leaves behind is no obstacle; it only tells the next process whose lock it was.
    """

    def __init__(self, run_dir: RunDir) -> None:
        self.run_dir = run_dir
        self._descriptor: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise ``RunInUseError`` naming the directory and the holder's pid."""
        path = self.run_dir.lock_file
        try:
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise JournalError(f"cannot create {path}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(descriptor, 32).decode(errors="replace").strip() or "unknown"
            os.close(descriptor)
            raise RunInUseError(
                f"{self.run_dir} is in use by another engine process (pid {holder}): let it finish or "
                "stop it, then try again"
            ) from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
        self._descriptor = descriptor

    def release(self) -> None:
        if self._descriptor is not None:
            os.close(self._descriptor)  # closing the descriptor drops the flock
            self._descriptor = None


def results_settings(config: TaskConfig) -> dict[str, Any]:
    """The settings a run's results depend on, by dotted key: the task's labels, how rows and
    their ids and labels are selected, each stage's model, prompts and parameters (not its mode),
    and which embedded backend answered (None for an external endpoint)."""
    data = config.model_dump(mode="json")
    settings: dict[str, Any] = {"labels": data["labels"], "dataset.limit": data["dataset"]["limit"]}
    settings.update({f"dataset.{key}": data["dataset"][key] for key in _SELECTION})
    callers = [("predict", data["predict"])]
    judges = data["judge"] if isinstance(data["judge"], list) else [data["judge"]]
    callers += [("judge" if len(judges) == 1 else f"judge.{judge['name']}", judge) for judge in judges]
    for caller, stage in callers:
        settings.update({
            f"{caller}.{key}": value for key, value in stage.items()
            if key not in ("mode", "endpoint") and not (key in _ADDED_DEFAULTS and value == _ADDED_DEFAULTS[key])
        })
    embedded = config.endpoint.base_url is None
    settings["local.backend"] = data["local"]["backend"] if embedded else None
    settings["local.seed"] = data["local"]["seed"] if embedded else None
    return settings


# Stage settings added after runs were first journaled: at their defaults they change nothing a
# run's results depend on, so they are left out, and a run started before they existed resumes.
# (A stage's mode and endpoint are how its calls are made, not what they ask: never compared.)
_ADDED_DEFAULTS: dict[str, Any] = {
    name: JudgeConfig.model_fields[name].get_default() for name in
    ("kind", "reasoning", "scale", "pass_at", "rubric", "swap", "repeats", "logprobs", "cache")
}
_ADDED_DEFAULTS["scale"] = list(_ADDED_DEFAULTS["scale"])  # as model_dump(mode="json") gives it


def changed_settings(started: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What changed between two ``results_settings``, one ``key: old -> new`` each. A larger
    ``dataset.limit`` (or none) only adds rows, so it is not a change."""
    changes = []
    for key in sorted(started.keys() | now.keys()):
        old, new = started.get(key), now.get(key)
        if old == new or (key == "dataset.limit" and old is not None and (new is None or new > old)):
            continue
        changes.append(f"{key}: {_short(old)} -> {_short(new)}")
    return changes


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def check_resumable(run_dir: RunDir, config: TaskConfig) -> dict[str, Any]:
    """``run.json`` of the run, once ``config`` is known to give the results its rows already
    have; a change to what they depend on is refused with one line naming it."""
    started = run_dir.info()
    recorded = started.get("results_settings")
    if recorded is None:  # a run from before results settings were recorded: its config is the record
        recorded = results_settings(TaskConfig.model_validate(started["config"]))
        started["results_settings"] = recorded
    changes = changed_settings(recorded, results_settings(config))
    if changes:
        raise ConfigError(
            f"{run_dir}: resuming would change what its results depend on ({'; '.join(changes)}): "
            "its finished rows would mix with rows of other settings. Resume with the run's own settings, "
            "or start a new run (--out NEW_DIR) for the new ones"
        )
    return started
