"""An async LLM-as-a-judge evaluation engine for any OpenAI-compatible endpoint."""

from .config import TaskConfig, load_config, with_overrides
from .errors import AuthError, ConfigError, EngineError, JournalError, ProviderError
from .evaluation import Evaluation
from .types import JoinedRow

__all__ = [
    "AuthError",
    "ConfigError",
    "EngineError",
    "Evaluation",
    "JoinedRow",
    "JournalError",
    "ProviderError",
    "TaskConfig",
    "load_config",
    "with_overrides",
]
