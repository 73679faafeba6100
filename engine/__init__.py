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
Judging finished runs (``Evaluation(config, sources=...)``, what ``python -m engine judge`` does)
    ``Sources``: the finished run whose predictions a run judges again, or the two runs a
    pairwise comparison judges; ``judging_config`` builds such a run's config from them and a
    judge file.
The rows
    ``JoinedRow``: a data row with its prediction and verdict (a line of ``results.parquet``);
    ``RowStatus``: how a row ended (``judged``, ``predict_failed``, ``judge_failed``, ``skipped``).
The endpoint (``Evaluation(config, provider=...)``; without one, the config's endpoint)
    ``Provider``: what the engine asks of an endpoint, realtime calls and the batch control
    plane, in the engine's own types: ``ChatRequest`` in, ``ChatReply`` or ``ProviderError`` out,
    ``BatchJob`` and ``BatchCounts`` for a batch, ``RateLimits`` for what the endpoint said about
    its budgets, ``ChatResult`` or ``Failure`` for a batch line, ``Usage`` for tokens.
    ``MockProvider`` answers in memory from a function: the double for tests.
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
from .mock_provider import MockProvider
from .prior import Sources, judging_config
from .provider import BatchCounts, BatchJob, ChatReply, Provider, RateLimits
from .shipped import example_config
from .types import ChatRequest, ChatResult, Failure, JoinedRow, RowStatus, Usage

__all__ = [
    "AuthError",
    "BatchApiMissingError",
    "BatchCounts",
    "BatchJob",
    "ChatReply",
    "ChatRequest",
    "ChatResult",
    "ConfigError",
    "EngineError",
    "Evaluation",
    "Failure",
    "FatalError",
    "JoinedRow",
    "JournalError",
    "MockProvider",
    "ModelNotFoundError",
    "Provider",
    "ProviderError",
    "RateLimits",
    "RowStatus",
    "RunInUseError",
    "Sources",
    "TaskConfig",
    "Usage",
    "example_config",
    "judging_config",
    "load_config",
    "with_overrides",
]
