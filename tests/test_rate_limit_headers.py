"""The adapter reads the endpoint's rate-limit headers, and a run follows them: loopback HTTP."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.openai import OpenAIProvider
from adapters.server.backends import SimBackend, SimSettings
from adapters.server.embedded import embedded_server
from engine import Evaluation
from engine.errors import ProviderError
from engine.types import ChatRequest

from .conftest import imdb_config

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
REQUEST = ChatRequest("predict:0", "0", "predict", BODY, estimated_tokens=10)


async def test_completions_and_429s_carry_the_rate_limit_headers() -> None:
    settings = SimSettings(rpm=2, tpm=1000, burst_seconds=60)
    async with embedded_server(SimBackend(settings)) as url, OpenAIProvider(url, "test") as client:
        first = await client.complete(REQUEST)
        await client.complete(REQUEST)
        with pytest.raises(ProviderError) as caught:
            await client.complete(REQUEST)
    assert first.rate_limits is not None and first.rate_limits.limit_requests == 2.0
    assert first.rate_limits.remaining_requests == 1.0 and first.rate_limits.limit_tokens == 1000.0
    assert caught.value.status_code == 429
    refused = caught.value.rate_limits
    assert refused is not None and (refused.limit_requests, refused.remaining_requests) == (2.0, 0.0)


async def test_a_server_without_limits_sends_none() -> None:
    async with embedded_server(SimBackend(SimSettings())) as url, OpenAIProvider(url, "test") as client:
        assert (await client.complete(REQUEST)).rate_limits is None


async def test_a_run_learns_the_servers_limit_and_is_never_refused(tmp_path: Path) -> None:
    # The server allows 20 requests/s with a 1 s burst; the client is told nothing and learns it.
    config = imdb_config(None, limit=30, **{"local.rpm": 1200, "endpoint.concurrency": 8})
    async with Evaluation(config, run_dir=tmp_path / "run") as evaluation:
        pass
    assert evaluation.metrics is not None
    assert evaluation.metrics["n_judged"] == 30 and evaluation.metrics["rate_limited"] == 0
