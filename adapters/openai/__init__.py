"""OpenAI's API (chat completions, Files, Batches) for any OpenAI-compatible endpoint."""

from .provider import OpenAIProvider

__all__ = ["OpenAIProvider"]
