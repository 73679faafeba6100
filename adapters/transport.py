"""What the provider adapters share about HTTP: raw response headers, the proxy a URL goes
through, and keeping a key out of a message."""

from __future__ import annotations

import urllib.parse
import urllib.request
from collections.abc import Sequence

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


def header_map(headers: RawHeaders) -> dict[str, str]:
    return {key.decode("latin-1"): value.decode("latin-1") for key, value in headers}
