"""An async LLM-as-a-judge evaluation engine for any OpenAI-compatible endpoint."""

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
from .types import JoinedRow

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
    "RunInUseError",
    "TaskConfig",
    "load_config",
    "with_overrides",
]
