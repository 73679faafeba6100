"""An async LLM-as-a-judge evaluation engine for any OpenAI-compatible endpoint.

The public API is what this package exports (``__all__``); import it from ``engine``::

    from engine import Evaluation, example_config, load_config, with_overrides

    config = with_overrides(load_config(example_config("imdb")), {"dataset.limit": 5})
    async with Evaluation(config) as evaluation:
        async for row in evaluation:
            ...

The run
    ``Evaluation``: one run of a task on any anyio backend: joined rows as they complete, then
    ``metrics`` (the contents of ``metrics.json``) and the run directory; resumable.
The task
    ``TaskConfig``: a validated task; ``load_config`` reads one from a TOML file,
    ``with_overrides`` changes settings by dotted name, ``example_config`` is the path of a
    shipped example's TOML file.
The rows
    ``JoinedRow``: a data row with its prediction and verdict (a line of ``results.parquet``);
    ``RowStatus``: how a row ended (``judged``, ``predict_failed``, ``judge_failed``, ``skipped``).
The errors (the hierarchy is drawn in ``engine.errors``)
    ``EngineError``, the base of every error raised on purpose; ``ConfigError``;
    ``JournalError`` and ``RunInUseError``; ``ProviderError`` and, stopping a run at once,
    ``FatalError``: ``AuthError``, ``ModelNotFoundError``, ``BatchApiMissingError``.

Every submodule (``engine.config``, ``engine.run``, ``engine.report`` and the rest) is internal:
its names and contents change without notice. ``python -m engine`` is the command line.
"""

from __future__ import annotations

from .config import TaskConfig, load_config, with_overrides
from .errors import (
    AuthError,
    BatchApiMissingError,
    ConfigError,
    EngineError,
    FatalError,
    JournalError,
    ModelNotFoundError,
    ProviderError,
    RunInUseError,
)
from .evaluation import Evaluation
from .shipped import example_config
from .types import JoinedRow, RowStatus

__all__ = [
    "AuthError",
    "BatchApiMissingError",
    "ConfigError",
    "EngineError",
    "Evaluation",
    "FatalError",
    "JoinedRow",
    "JournalError",
    "ModelNotFoundError",
    "ProviderError",
    "RowStatus",
    "RunInUseError",
    "TaskConfig",
    "example_config",
    "load_config",
    "with_overrides",
]
