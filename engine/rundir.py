"""The run directory: where a run's config, journal, results and metrics live.

    runs/<run-id>/run.json          the resolved config (no secrets: only the key's variable name)
    runs/<run-id>/journal/*.ndjson  append-only results per stage
    runs/<run-id>/results.parquet   one row per data row
    runs/<run-id>/metrics.json      the numbers
"""

from __future__ import annotations

import json
import os
import secrets
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .config import TaskConfig
from .errors import ConfigError, JournalError

RUN_FILE = "run.json"
METRICS_FILE = "metrics.json"


def new_run_dir(root: Path, task_name: str) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
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


def prepare_run_dir(run_dir: Path) -> None:
    """Make the directory of a new run; a run that lives there already is an error."""
    if (run_dir / RUN_FILE).exists():
        raise ConfigError(f"{run_dir}: a run lives here already; resume it with --resume {run_dir}")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise JournalError(f"cannot create the run directory {run_dir}: {exc.strerror or exc}") from exc


def create_run(run_dir: Path, config: TaskConfig, *, endpoint: str) -> None:
    """Write ``run.json``: from now on the directory is a run that ``--resume`` can finish."""
    write_json(
        run_dir / RUN_FILE,
        {
            "run_id": run_dir.name,
            "created_at": datetime.now(timezone.utc).isoformat(),
            "endpoint": endpoint,
            "config": config.model_dump(mode="json"),
        },
    )


def load_run(run_dir: Path) -> TaskConfig:
    """The config a run was started with, for ``--resume``."""
    path = run_dir / RUN_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{run_dir}: not a run directory (no {RUN_FILE})") from None
    except ValueError as exc:
        raise ConfigError(f"{path}: unreadable: {exc}") from None
    try:
        return TaskConfig.model_validate(data["config"])
    except Exception as exc:  # pydantic's ValidationError or a missing key: the file was edited
        raise ConfigError(f"{path}: config does not validate: {exc}") from None
