"""Backends for the embedded server: the protocol they meet and the simulator."""

from __future__ import annotations

from .base import Backend, BackendError, Completion, DropConnection, MalformedReply
from .sim import SimBackend, SimSettings

__all__ = [
    "Backend",
    "BackendError",
    "Completion",
    "DropConnection",
    "MalformedReply",
    "SimBackend",
    "SimSettings",
]
