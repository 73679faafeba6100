"""Chat completions against any OpenAI-compatible endpoint through the official ``openai`` SDK.

The SDK does the HTTP (auth headers, base URL handling, error types); we skip the per-call work
we don't need: its request-parameter transform (the body is serialised once, here) and its
response models (we read three fields of the JSON, and the ``x-ratelimit-*`` headers the limiter
learns from). On asyncio it uses the SDK's aiohttp
transport (``openai.DefaultAioHttpClient``), measured at under half the CPU per call of the
default httpx client; on other anyio backends (trio) it falls back to the default client.

The SDK's own retries are off: the engine retries and rate-limits, in one place. Every SDK error
is mapped once onto ``ProviderError`` with its retry ``kind``. The Files and Batches calls of
batch mode go through the SDK's typed resources: they are few, so their cost does not matter.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import httpx2
import openai
import sniffio
from openai.types import Batch

from engine.errors import AuthError, ErrorKind, ModelNotFoundError, ProviderError
from engine.limits import RateLimits
from engine.retry import parse_retry_after
from engine.types import ChatRequest, Usage

_JSON_HEADERS = {"Content-Type": "application/json"}
_RATE_LIMIT_PREFIX = b"x-ratelimit-"
_RATE_LIMIT_FIELDS = {
    b"limit-requests": "limit_requests",
    b"limit-tokens": "limit_tokens",
    b"remaining-requests": "remaining_requests",
    b"remaining-tokens": "remaining_tokens",
}


@dataclass(frozen=True, slots=True)
class Completion:
    """The parts of a chat completion the engine keeps."""

    content: str
    model: str
    usage: Usage
    latency_s: float
    rate_limits: RateLimits | None = None


def _http_client(timeout_s: float) -> httpx2.AsyncClient:
    if sniffio.current_async_library() == "asyncio":
        return openai.DefaultAioHttpClient(timeout=timeout_s)
    return openai.DefaultAsyncHttpxClient(timeout=timeout_s)


def _scrub(message: str, secret: str) -> str:
    return message.replace(secret, "***") if secret and len(secret) >= 4 else message


class OpenAICompatClient:
    """One endpoint, one key. Create it inside the event loop that will use it."""

    def __init__(self, base_url: str, api_key: str, *, api_key_env: str = "", timeout_s: float = 60.0) -> None:
        """``api_key_env`` names the variable the key came from, for the 401 message."""
        self.base_url = base_url
        self._api_key = api_key
        self._api_key_env = api_key_env
        self._timeout_s = timeout_s
        self.sdk = openai.AsyncOpenAI(
            base_url=base_url,
            api_key=api_key,
            max_retries=0,
            timeout=timeout_s,
            http_client=_http_client(timeout_s),
        )
        self._options: Any = {"headers": _JSON_HEADERS, "security": {"bearer_auth": True}}

    async def aclose(self) -> None:
        await self.sdk.close()

    async def __aenter__(self) -> OpenAICompatClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def complete(self, request: ChatRequest) -> Completion:
        """One chat-completion call; raises ``ProviderError`` with a retry kind on any failure."""
        started = time.perf_counter()
        try:
            response = await self.sdk.post(
                "/chat/completions",
                cast_to=httpx2.Response,
                content=json.dumps(request.body).encode(),
                options=self._options,
            )
        except openai.APIStatusError as exc:
            raise self._status_error(exc, model=request.body.get("model")) from exc
        except openai.APIConnectionError as exc:  # APITimeoutError is a subclass
            raise self._connection_error(exc) from exc
        return _parse_completion(response.content, time.perf_counter() - started, _rate_limits(response.headers))

    # -- Files and Batches: the control plane of batch mode ---------------------------------

    async def upload_batch_file(self, path: Path) -> str:
        """Upload a JSONL request file (``purpose="batch"``); returns the file id."""
        async with self._errors():
            uploaded = await self.sdk.files.create(file=path, purpose="batch")
        return uploaded.id

    async def create_batch(self, input_file_id: str, metadata: dict[str, str]) -> Batch:
        async with self._errors():
            return await self.sdk.batches.create(
                input_file_id=input_file_id,
                endpoint="/v1/chat/completions",
                completion_window="24h",
                metadata=metadata,
            )

    async def retrieve_batch(self, batch_id: str) -> Batch:
        async with self._errors():
            return await self.sdk.batches.retrieve(batch_id)

    async def cancel_batch(self, batch_id: str) -> Batch:
        async with self._errors():
            return await self.sdk.batches.cancel(batch_id)

    async def list_batches(self) -> AsyncIterator[Batch]:
        """Every batch the key can see, newest first (the SDK follows the pagination)."""
        async with self._errors():
            async for batch in self.sdk.batches.list(limit=100):
                yield batch

    async def download_file(self, file_id: str, path: Path) -> None:
        """Stream a file's content to ``path`` (written to a temporary name, then renamed)."""
        temporary = path.with_suffix(path.suffix + ".part")
        async with self._errors():
            async with self.sdk.files.with_streaming_response.content(file_id) as response:
                async with await anyio.open_file(temporary, "wb") as out:
                    async for block in response.iter_bytes(1 << 20):
                        await out.write(block)
        temporary.replace(path)

    @asynccontextmanager
    async def _errors(self) -> AsyncIterator[None]:
        """Map SDK errors of control-plane calls onto ``ProviderError``."""
        try:
            yield
        except openai.APIStatusError as exc:
            raise self._status_error(exc) from exc
        except openai.APIConnectionError as exc:
            raise self._connection_error(exc) from exc

    def _connection_error(self, exc: openai.APIConnectionError) -> ProviderError:
        # The aiohttp transport reports a dropped connection as a connect *timeout*: look at the
        # root cause to tell a real timeout from a reset.
        root: BaseException = exc
        while root.__cause__ is not None:
            root = root.__cause__
        timed_out = isinstance(root, (TimeoutError, aiohttp.ServerTimeoutError)) or (
            root is exc and isinstance(exc, openai.APITimeoutError)
        )
        if timed_out:
            return ProviderError(f"timed out after {self._timeout_s:g} s", kind="transient", reason="timeout")
        message = _scrub(f"connection failed: {type(root).__name__}: {root}", self._api_key)
        return ProviderError(message, kind="transient", reason="connection")

    def _status_error(self, exc: openai.APIStatusError, *, model: str | None = None) -> ProviderError:
        """``model`` is set for chat calls, where a 404 can only mean an unknown model."""
        status = exc.status_code
        message = _scrub(f"HTTP {status}: {exc.message}", self._api_key)
        if status == 404 and model is not None:
            message = f"{message} (the endpoint {self.base_url} does not serve the model {model!r})"
            return ModelNotFoundError(message, kind="no", reason="http_404", status_code=status)
        if status == 401:
            source = f"${self._api_key_env}" if self._api_key_env else "the API key"
            message = f"{message} (the endpoint {self.base_url} rejected the key in {source})"
            return AuthError(message, kind="no", reason="http_401", status_code=status)
        if status == 429:
            headers = exc.response.headers
            return ProviderError(
                message,
                kind="rate_limit",
                reason="http_429",
                status_code=status,
                retry_after=parse_retry_after(headers),
                rate_limits=_rate_limits(headers),
            )
        kind: ErrorKind = "transient" if status >= 500 or status in (408, 409) else "no"
        return ProviderError(message, kind=kind, reason=f"http_{status}", status_code=status)


def _rate_limits(headers: httpx2.Headers) -> RateLimits | None:
    """The ``x-ratelimit-{limit,remaining}-{requests,tokens}`` headers; None when there are none.

    One pass over the raw headers: this runs for every response.
    """
    found: dict[str, float] = {}
    for key, value in headers.raw:
        if key[:12].lower() == _RATE_LIMIT_PREFIX and (name := _RATE_LIMIT_FIELDS.get(key[12:].lower())):
            try:
                number = float(value)
            except ValueError:
                continue
            if 0.0 <= number < math.inf:
                found[name] = number
    return RateLimits(**found) if found else None


def _parse_completion(raw: bytes, latency_s: float, rate_limits: RateLimits | None) -> Completion:
    try:
        payload = json.loads(raw)
        if payload.get("choices") == []:
            raise ProviderError("the response has no choices", kind="transient", reason="empty_response")
        choice = payload["choices"][0]
        content = choice["message"]["content"]
        model = payload.get("model") or ""
        usage = payload.get("usage") or {}
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        snippet = raw[:80].decode("utf-8", "replace")
        raise ProviderError(f"response is not a chat completion: {snippet!r}", kind="transient", reason="malformed_body") from exc
    if not isinstance(content, str) or not content.strip():
        raise ProviderError("the response has no message content", kind="transient", reason="empty_response")
    tokens = Usage(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))
    return Completion(content, model, tokens, latency_s, rate_limits)
