"""An async LLM-as-a-judge evaluation engine for any OpenAI-compatible endpoint."""

from .config import TaskConfig, load_config, with_overrides
from .errors import AuthError, ConfigError, EngineError, FatalError, JournalError, ModelNotFoundError, ProviderError
from .evaluation import Evaluation
from .types import JoinedRow

__all__ = [
    "AuthError",
    "ConfigError",
    "EngineError",
    "Evaluation",
    "FatalError",
    "JoinedRow",
    "JournalError",
    "ModelNotFoundError",
    "ProviderError",
    "TaskConfig",
    "load_config",
    "with_overrides",
]
