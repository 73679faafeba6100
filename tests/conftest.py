from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from adapters.local.backends.base import Completion
from adapters.local.backends.sim import SimBackend, SimSettings
from adapters.local.embedded import EmbeddedServer
from engine.config import TaskConfig, load_config, with_overrides
from engine.shipped import example_config

TEST_KEY_ENV = "ENGINE_TEST_API_KEY"
TEST_KEY = "sk-test-4c0ffee-never-log-me"


class CountingBackend:
    """A sim backend that counts the requests it sees and can signal after the n-th one."""

    def __init__(self, settings: SimSettings, *, signal_after: int | None = None) -> None:
        self._inner = SimBackend(settings)
        self.calls = 0
        self.by_model: dict[str, int] = {}
        self.reached = threading.Event()
        self._signal_after = signal_after

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def arm(self, calls: int) -> None:
        """Signal ``reached`` again once the backend has seen ``calls`` requests in all."""
        self.reached.clear()
        self._signal_after = calls

    async def complete(self, body: dict[str, Any]) -> Completion:
        self.calls += 1
        if self._signal_after is not None and self.calls >= self._signal_after:
            self.reached.set()
        return await self._inner.complete(body)


@pytest.fixture
def api_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(TEST_KEY_ENV, TEST_KEY)
    return TEST_KEY


def start_server(backend: Any, **options: Any) -> Iterator[str]:
    server = EmbeddedServer(backend, **options)
    url = server.start()
    try:
        yield url
    finally:
        server.stop()


@pytest.fixture
def sim_backend() -> CountingBackend:
    return CountingBackend(SimSettings(seed=1))


@pytest.fixture
def sim_url(sim_backend: CountingBackend) -> Iterator[str]:
    yield from start_server(sim_backend, api_key=TEST_KEY)


def imdb_config(base_url: str | None, *, limit: int | None = 40, **overrides: Any) -> TaskConfig:
    config = load_config(example_config("imdb"))
    return with_overrides(
        config,
        {
            "endpoint.base_url": base_url,
            "endpoint.api_key_env": TEST_KEY_ENV,
            "dataset.limit": limit,
            "local.backend": "sim",
            **overrides,
        },
    )


def run_files(run_dir: Path) -> list[Path]:
    return [path for path in run_dir.rglob("*") if path.is_file()]
