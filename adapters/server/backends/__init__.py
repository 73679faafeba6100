"""Backends for the embedded server: the protocol they meet and the simulator."""

from __future__ import annotations

from .base import (
    Backend,
    BackendError,
    BackendReply,
    BatchPolicy,
    DropConnection,
    Hang,
    MalformedReply,
    TruncatedReply,
    batch_policy,
)
from .sim import SimBackend, SimSettings

__all__ = [
    "Backend",
    "BackendError",
    "BackendReply",
    "BatchPolicy",
    "DropConnection",
    "Hang",
    "MalformedReply",
    "SimBackend",
    "SimSettings",
    "TruncatedReply",
    "batch_policy",
]
