"""The engine's exceptions.

    EngineError
    ├── ConfigError                bad config, data set or template: names the file, row or field
    ├── JournalError               the run directory cannot be read or written
    │   └── RunInUseError          another process holds the run directory
    └── ProviderError              one call failed; ``kind`` says whether it may be retried
        └── FatalError             every other row would fail the same way: the run stops at once
            ├── AuthError          401: the endpoint rejected the key
            ├── ModelNotFoundError 404: the endpoint does not serve the model
            └── BatchApiMissingError  batch mode, but the endpoint has no Files/Batches API

Adapters map their dependency's errors onto ``ProviderError`` once (``raise ... from exc``);
the engine decides retries and limits from ``kind`` alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from .provider import RateLimits

ErrorKind = Literal["no", "transient", "rate_limit"]


class EngineError(Exception):
    """Base of every error the engine raises on purpose."""


class ConfigError(EngineError):
    """The task cannot start: the message names the file, row or field and what to do."""


class JournalError(EngineError):
    """The run directory cannot be read or written."""


class RunInUseError(JournalError):
    """Another live process runs in this run directory; two would pay for every row twice."""


class ProviderError(EngineError):
    """A call failed.

    ``kind`` is ``no`` (do not retry), ``transient`` (retry with backoff) or ``rate_limit``
    (retry after ``retry_after`` seconds when the server said so). ``reason`` is a short code
    recorded with a row that finally fails. ``rate_limits`` is what a 429 said about the budgets.
    """

    def __init__(
        self,
        message: str,
        *,
        kind: ErrorKind,
        reason: str,
        status_code: int | None = None,
        retry_after: float | None = None,
        rate_limits: RateLimits | None = None,
    ) -> None:
        super().__init__(message)
        self.kind: ErrorKind = kind
        self.reason = reason
        self.status_code = status_code
        self.retry_after = retry_after
        self.rate_limits = rate_limits


class FatalError(ProviderError):
    """Retrying cannot help and neither can the next row: stop the run, keep what is done."""


class AuthError(FatalError):
    """The endpoint rejected the key."""


class ModelNotFoundError(FatalError):
    """The endpoint does not serve the requested model."""


class BatchApiMissingError(FatalError):
    """The endpoint has no Files/Batches API: batch mode cannot run against it."""


def engine_error_in(exc: BaseException) -> EngineError | None:
    """The first ``EngineError`` inside an exception (group), to re-raise it plainly."""
    if isinstance(exc, EngineError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = engine_error_in(inner)
            if found is not None:
                return found
    return None
