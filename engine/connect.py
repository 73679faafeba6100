"""Where the engine meets its adapters: the provider an endpoint config names, the embedded
server a config without a base URL runs against, and the server ``python -m engine serve`` runs.

This is the composition root: the only engine module that imports ``adapters``, and only inside
its functions, when a run or the server starts. A new provider is an adapter module implementing ``engine.provider.Provider``
plus its name in ``EndpointConfig.provider`` and a branch in ``provider_for``.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from .config import EndpointConfig, LocalServerConfig, TaskConfig
from .errors import ConfigError
from .provider import Provider

if TYPE_CHECKING:
    from adapters.server.backends.base import Backend


async def open_providers(
    config: TaskConfig, stack: AsyncExitStack, *, server_dir: Path
) -> tuple[dict[EndpointConfig, Provider], str | None]:
    """A provider for each endpoint the config's callers call (``TaskConfig.endpoint_of``),
    entered on ``stack``, and the embedded server's URL (None when no endpoint needs it).

    An endpoint without a base URL is the embedded server, started once (on ``stack`` too) for
    every such endpoint, keeping its files and batches in ``server_dir``, so a resumed run finds
    the batches its killed predecessor had in progress.
    """
    endpoints = list(config.endpoints)
    embedded_url = None
    if any(endpoint.base_url is None for endpoint in endpoints):
        from adapters.server.embedded import embedded_server

        backend = await anyio.to_thread.run_sync(local_backend, config.local)
        embedded_url = await stack.enter_async_context(embedded_server(backend, data_dir=server_dir))
    providers: dict[EndpointConfig, Provider] = {}
    for endpoint in endpoints:
        base_url = endpoint.base_url or embedded_url
        assert base_url is not None
        providers[endpoint] = await stack.enter_async_context(provider_for(endpoint, base_url, endpoint.api_key()))
    return providers, embedded_url


def provider_for(endpoint: EndpointConfig, base_url: str, api_key: str) -> Provider:
    """The adapter ``endpoint.provider`` names (with its ``api``), for ``base_url`` with ``api_key``."""
    if endpoint.provider == "anthropic":
        from adapters.anthropic import AnthropicProvider

        return AnthropicProvider(base_url, api_key, api_key_env=endpoint.api_key_env, timeout_s=endpoint.timeout_s)
    from adapters.openai import OpenAIProvider

    return OpenAIProvider(
        base_url, api_key, api_key_env=endpoint.api_key_env, timeout_s=endpoint.timeout_s, api=endpoint.api
    )


def local_backend(local: LocalServerConfig) -> Backend:
    """The embedded server's backend as configured; the local model is loaded here, once."""
    if local.backend == "local":
        from adapters.server.backends.llama import (
            LlamaBackend,
            LlamaSettings,
            ModelUnavailable,
        )

        try:
            model = LlamaBackend(LlamaSettings(n_threads=local.threads, seed=local.seed))
            model.load()
        except ModelUnavailable as exc:
            raise ConfigError(
                f"local.backend = \"local\": {exc} (or evaluate with the simulator: --set local.backend=sim, "
                "or point --base-url at a hosted model)"
            ) from None
        return model
    from adapters.server.backends.sim import SimBackend, SimSettings

    settings = SimSettings(
        latency_ms=local.latency_ms,
        rpm=local.rpm,
        tpm=local.tpm,
        error_rate=local.error_rate,
        batch_min_seconds=local.batch_min_seconds,
        judge_correct_rate=local.judge_correct_rate,
        judge_first_position_rate=local.judge_first_position_rate,
        judge_sensitivity=local.judge_sensitivity,
        judge_specificity=local.judge_specificity,
        seed=local.seed,
    )
    return SimBackend(settings)


@dataclass(frozen=True, slots=True)
class Upstream:
    """Another endpoint the embedded server forwards to, and the variable holding its key."""

    url: str
    api_key_env: str | None = None


def serve(
    backend: LocalServerConfig | Upstream,
    *,
    host: str,
    port: int,
    api_key_env: str | None,
    data_dir: Path | None,
    on_ready: Callable[[str, str], None],
) -> Awaitable[None]:
    """``python -m engine serve``: the embedded server on ``host:port`` until interrupted, in front
    of an upstream endpoint or the backend a local config names; ``on_ready(url, described)`` says
    what it serves once it listens. Clients must send the key in ``$api_key_env`` when it is given."""
    from adapters.server.server import api_key_from_env, serve_forever

    api_key = None
    if api_key_env:
        try:
            api_key = api_key_from_env(api_key_env, required=True)
        except ValueError as exc:
            raise ConfigError(f"--api-key-env: {exc}") from None
    served: Backend
    if isinstance(backend, Upstream):
        from adapters.server.backends.upstream import UpstreamBackend

        key = os.environ.get(backend.api_key_env) if backend.api_key_env else None
        served, described = UpstreamBackend(backend.url, api_key=key), f"the upstream {backend.url}"
    else:
        served = local_backend(backend)
        local = backend.backend == "local"
        described = f"the local model {served.name} (CPU)" if local else "the sim backend (simulated answers)"
    return serve_forever(
        served, host=host, port=port, api_key=api_key, data_dir=data_dir, on_ready=lambda url: on_ready(url, described)
    )
