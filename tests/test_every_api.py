"""What stops a run is the same through every API the engine speaks (OpenAI's chat completions and
Responses API, Anthropic's Messages API), realtime and batch, against the embedded server through
the official SDKs: a rejected key and an unknown model stop the run with one line that names what
to fix and no secret; 529s and 429 storms are retried (see the fault matrix's rows per API)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.server.backends import SimSettings
from adapters.server.embedded import EmbeddedServer
from engine import Evaluation
from engine.errors import AuthError, ModelNotFoundError
from tests.conftest import TEST_KEY, TEST_KEY_ENV, imdb_config
from tests.support import CountingBackend

APIS = {
    "chat": {},
    "responses": {"endpoint.api": "responses"},
    "messages": {"endpoint.provider": "anthropic"},
}
WRONG_KEY = "sk-wrong-0123456789abcdef"


@pytest.fixture
def server() -> Iterator[tuple[CountingBackend, str]]:
    backend = CountingBackend(SimSettings(seed=3, models=("small", "judge")))
    with EmbeddedServer(backend, api_key=TEST_KEY) as url:
        yield backend, url


@pytest.mark.parametrize("mode", ["realtime", "batch"])
@pytest.mark.parametrize("api", sorted(APIS))
async def test_a_rejected_key_stops_the_run_naming_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: tuple[CountingBackend, str], api: str, mode: str
) -> None:
    backend, url = server
    monkeypatch.setenv(TEST_KEY_ENV, WRONG_KEY)
    config = imdb_config(url, limit=10, **APIS[api], **{"predict.model": "small", "judge.model": "judge",
                                                        "predict.mode": mode, "judge.mode": mode})
    with pytest.raises(AuthError) as refused:
        async with Evaluation(config, run_dir=tmp_path / "run"):
            pass
    message = str(refused.value)
    assert "HTTP 401" in message and f"${TEST_KEY_ENV}" in message and WRONG_KEY not in message
    assert backend.calls == 0  # refused at the door: nothing reached the model


@pytest.mark.parametrize("mode", ["realtime", "batch"])
@pytest.mark.parametrize("api", sorted(APIS))
async def test_an_unknown_model_stops_the_run_naming_it(
    tmp_path: Path, api_key: str, server: tuple[CountingBackend, str], api: str, mode: str
) -> None:
    backend, url = server
    config = imdb_config(url, limit=10, **APIS[api], **{"predict.model": "small", "judge.model": "no-such-model",
                                                        "predict.mode": mode, "judge.mode": mode})
    with pytest.raises(ModelNotFoundError) as refused:
        async with Evaluation(config, run_dir=tmp_path / "run"):
            pass
    assert "HTTP 404" in str(refused.value) and "no-such-model" in str(refused.value)
    judge_calls = sum(count for key, count in backend.requests.items() if '"no-such-model"' in key)
    assert judge_calls == 0
