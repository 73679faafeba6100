"""What tests share beyond fixtures: the counting sim backend (the faults benchmark uses it too)."""

from __future__ import annotations

from .counting import CountingBackend, request_key

__all__ = ["CountingBackend", "request_key"]
