"""Anthropic's Messages API and Message Batches, with the official ``anthropic`` SDK."""

from .provider import AnthropicProvider

__all__ = ["AnthropicProvider"]
