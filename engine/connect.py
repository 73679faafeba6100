"""Where the engine meets its adapters: the provider an endpoint config names, and the embedded
server a config without a base URL runs against.

This is the composition root: the only engine module that imports ``adapters``, and only here,
when a run starts. A new provider is an adapter module implementing ``engine.provider.Provider``
plus its name in ``EndpointConfig.provider`` and a branch in ``provider_for``.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from .config import EndpointConfig, LocalServerConfig, TaskConfig
from .errors import ConfigError
from .provider import Provider

if TYPE_CHECKING:
    from adapters.server.backends.base import Backend

async def open_provider(config: TaskConfig, stack: AsyncExitStack, *, server_dir: Path) -> tuple[Provider, str]:
    """The provider for the config's endpoint, entered on ``stack``, and the endpoint's URL.

    Without a base URL the embedded server is started first (on ``stack`` too), keeping its
    files and batches in ``server_dir``, so a resumed run finds the batches its killed
    predecessor had in progress.
    """
    base_url = config.endpoint.base_url
    if not base_url:
        from adapters.server.embedded import embedded_server

        backend = await anyio.to_thread.run_sync(local_backend, config.local)
        base_url = await stack.enter_async_context(embedded_server(backend, data_dir=server_dir))
    provider = provider_for(config.endpoint, base_url, config.api_key())
    return await stack.enter_async_context(provider), base_url


def provider_for(endpoint: EndpointConfig, base_url: str, api_key: str) -> Provider:
    """The adapter ``endpoint.provider`` names, for ``base_url`` with ``api_key``."""
    if endpoint.provider == "openai":
        from adapters.openai import OpenAIProvider

        return OpenAIProvider(base_url, api_key, api_key_env=endpoint.api_key_env, timeout_s=endpoint.timeout_s)
    raise ConfigError(f"endpoint.provider: no adapter for {endpoint.provider!r}")


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
        seed=local.seed,
    )
    return SimBackend(settings)
