"""What the provider adapters share about HTTP: raw response headers, the proxy a URL goes
through, keeping a key out of a message, and the transport's failures as ``ProviderError``s."""

from __future__ import annotations

import urllib.parse
import urllib.request
from collections.abc import Sequence

import aiohttp
import httpx2

from engine.errors import ProviderError

RawHeaders = Sequence[tuple[bytes, bytes]]


def scrub(message: str, secret: str) -> str:
    """``message`` with ``secret`` (a key of four characters or more) replaced by ``***``."""
    return message.replace(secret, "***") if secret and len(secret) >= 4 else message


def env_proxy(url: str) -> str | None:
    """The proxy ``url`` goes through by HTTP(S)_PROXY and NO_PROXY, as the SDKs honour them:
    looked up once, where aiohttp's ``trust_env`` would look them up on every request."""
    parts = urllib.parse.urlsplit(url)
    if urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return urllib.request.getproxies().get(parts.scheme)


def unsent_http_client() -> httpx2.AsyncClient:
    """An HTTP client that cannot send, for an SDK client built only for its base URL and headers:
    building the SDK's own costs an SSL context and the import of httpcore (and trio, where it is
    installed)."""
    return httpx2.AsyncClient(transport=httpx2.AsyncBaseTransport())


def header_map(headers: RawHeaders) -> dict[str, str]:
    return {key.decode("latin-1"): value.decode("latin-1") for key, value in headers}


def timeout_error(timeout_s: float) -> ProviderError:
    return ProviderError(f"timed out after {timeout_s:g} s", kind="transient", reason="timeout")


def connection_error(root: BaseException, secret: str) -> ProviderError:
    """A connection that failed, named by its root cause (``secret`` kept out of the message)."""
    message = scrub(f"connection failed: {type(root).__name__}: {root}", secret)
    return ProviderError(message, kind="transient", reason="connection")


def sdk_connection_error(
    exc: BaseException, sdk_timeout: type[BaseException], secret: str, timeout_s: float
) -> ProviderError:
    """An SDK's connection error (``sdk_timeout``: its timeout class) as a timeout or a failed
    connection. The aiohttp transport reports a dropped connection as a connect *timeout*: the
    root cause tells a real timeout from a reset."""
    root: BaseException = exc
    while root.__cause__ is not None:
        root = root.__cause__
    timed_out = isinstance(root, (TimeoutError, aiohttp.ServerTimeoutError)) or (root is exc and isinstance(exc, sdk_timeout))
    return timeout_error(timeout_s) if timed_out else connection_error(root, secret)
