from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from adapters.server.backends.sim import SimSettings
from adapters.server.embedded import EmbeddedServer
from engine import TaskConfig, example_config, load_config, with_overrides
from tests.support import CountingBackend

pytest_plugins = ["tests.llama_server"]  # the llama_server fixture: one real llama.cpp server per session

TEST_KEY_ENV = "ENGINE_TEST_API_KEY"
TEST_KEY = "sk-test-4c0ffee-never-log-me"


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
