"""``engine.provider.Provider`` for any OpenAI-compatible endpoint, with the official ``openai`` SDK.

The SDK owns the endpoint: base URL, authentication and default headers, and every call of the
control plane (Files and Batches, few enough that their cost does not matter). Chat completions,
the hot path, are sent with headers and URL the SDK built once, over an aiohttp session: the
SDK's per-call machinery (request options, parameter transform, header merging, httpx request
and response objects) cost about 1 ms of CPU per call, four times the HTTP itself. The body is
serialised once, and only three fields of the reply and the ``x-ratelimit-*`` headers are read.
Outside asyncio (trio) aiohttp cannot run, and chat calls go through the SDK's ``post`` instead.

``api="responses"`` sends the same calls to OpenAI's Responses API instead, realtime and in
batches (``/v1/responses``, the bodies translated by :mod:`.responses_format`). With
``api="chat"`` a model that ``/chat/completions`` refuses as served only on ``/v1/responses``
moves there, realtime, for the rest of the provider's life; batches keep to ``api``.

The SDK's own retries are off: the engine retries and rate-limits, in one place. Every error is
mapped once onto ``ProviderError`` with its retry ``kind``, transport errors raised while a body
streams included. An endpoint without the Files/Batches routes (llama.cpp, Ollama, vLLM's
realtime server) raises ``BatchApiMissingError``, which stops a batch run at once. The Batch API's
line formats are :mod:`.batch_format`; the engine's tags travel as each batch's ``metadata``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import aiohttp
import anyio
import httpx2
import openai
import sniffio
from openai.types import Batch

from adapters.transport import (
    RawHeaders,
    connection_error,
    env_proxy,
    header_map,
    scrub,
    sdk_connection_error,
    timeout_error,
    unsent_http_client,
)
from engine import fastjson
from engine.errors import AuthError, BatchApiMissingError, ErrorKind, FatalError, ModelNotFoundError, ProviderError
from engine.provider import BatchCounts, BatchJob, ChatReply, RateLimits, made_from
from engine.run.retry import parse_retry_after
from engine.types import ChatRequest, Outcome

from . import batch_format, responses_format

Api = Literal["chat", "responses"]

_JSON_HEADERS = {"Content-Type": "application/json"}
_RATE_LIMIT_PREFIX = b"x-ratelimit-"
# OpenAI's refusal, on /chat/completions, of a model served only on the Responses API.
_RESPONSES_ONLY = "only supported in v1/responses"
_RATE_LIMIT_FIELDS = {
    b"limit-requests": "limit_requests",
    b"limit-tokens": "limit_tokens",
    b"remaining-requests": "remaining_requests",
    b"remaining-tokens": "remaining_tokens",
}



class OpenAIProvider:
    """``engine.provider.Provider`` for one OpenAI-compatible endpoint and key. Create it inside
    the event loop that will use it."""

    def __init__(
        self, base_url: str, api_key: str, *, api_key_env: str = "", timeout_s: float = 60.0, api: Api = "chat"
    ) -> None:
        """``api_key_env`` names the variable the key came from, for the 401 message; ``api`` is
        the API calls go to: chat completions, or the Responses API."""
        if api not in ("chat", "responses"):
            raise ValueError(f"api must be 'chat' or 'responses', got {api!r}")
        self.base_url = base_url
        self.api: Api = api
        self._on_responses: set[str] = set()  # models moved to the Responses API
        self._api_key = api_key
        self._api_key_env = api_key_env
        self._timeout_s = timeout_s
        on_asyncio = sniffio.current_async_library() == "asyncio"
        self._http_client_type = openai.DefaultAioHttpClient if on_asyncio else openai.DefaultAsyncHttpxClient
        self._sdk: openai.AsyncOpenAI | None = None
        endpoint = self._build_sdk(unsent_http_client())
        self._chat_url = str(endpoint.base_url.join("chat/completions"))
        self._responses_url = str(endpoint.base_url.join("responses"))
        self._chat_headers = {
            name: value
            for name, value in {**endpoint.default_headers, **endpoint.auth_headers}.items()
            if isinstance(value, str)  # the SDK marks headers it leaves out with Omit()
        }
        self._session: aiohttp.ClientSession | None = None
        if on_asyncio:
            # The engine's limiter bounds the connections in flight, so the pool does not.
            # ``timeout_s`` bounds a chat call whole, reply included: a per-read limit would let a
            # reply that trickles a byte at a time hold its call (and its slot) for ever.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),
                timeout=aiohttp.ClientTimeout(total=timeout_s, sock_connect=timeout_s),
            )
        # HTTP(S)_PROXY and NO_PROXY, as the SDK honours them; looked up once, where aiohttp's
        # trust_env would look them (and ~/.netrc) up in a worker thread on every request.
        self._proxy = env_proxy(self._chat_url)
        self._options: Any = {"headers": _JSON_HEADERS, "security": {"bearer_auth": True}}

    @property
    def sdk(self) -> openai.AsyncOpenAI:
        """The SDK client, built on first use (the control plane, and chat calls off asyncio): its
        HTTP client costs an SSL context and the import of httpcore, 0.05-0.45 s of CPU, that a
        realtime run on asyncio never needs."""
        if self._sdk is None:
            self._sdk = self._build_sdk(self._http_client_type(timeout=self._timeout_s))
        return self._sdk

    def _build_sdk(self, http_client: httpx2.AsyncClient) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=self.base_url, api_key=self._api_key, max_retries=0, timeout=self._timeout_s, http_client=http_client
        )

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):  # a cancelled run still closes its connections
            if self._session is not None:
                await self._session.close()
            if self._sdk is not None:
                await self._sdk.close()

    async def __aenter__(self) -> OpenAIProvider:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def complete(self, request: ChatRequest) -> ChatReply:
        """One call (chat completion, or response); raises ``ProviderError`` with a retry kind on any failure."""
        model = request.body.get("model")
        if self.api == "responses" or model in self._on_responses:
            return await self._respond(request)
        started = time.perf_counter()
        status, headers, raw = await self._send(self._chat_url, "/chat/completions", fastjson.dumps(request.body))
        if status >= 400:
            detail = _error_message(status, raw)
            if status in (400, 404) and _RESPONSES_ONLY in detail.lower() and isinstance(model, str):
                self._on_responses.add(model)
                return await self._respond(request)
            raise self._status_error(status, detail, headers, model=model)
        return _parse_completion(raw, time.perf_counter() - started, _rate_limits(headers))

    async def _respond(self, request: ChatRequest) -> ChatReply:
        """The call on the Responses API."""
        started = time.perf_counter()
        body = fastjson.dumps(responses_format.to_responses(request.body))
        status, headers, raw = await self._send(self._responses_url, "/responses", body)
        if status >= 400:
            raise self._responses_error(status, raw, headers, request.body.get("model"))
        try:
            content, model, usage = responses_format.read_response(fastjson.loads(raw))
        except ValueError as exc:
            snippet = raw[:80].decode("utf-8", "replace")
            raise ProviderError(f"response is not JSON: {snippet!r}", kind="transient", reason="malformed_body") from exc
        return ChatReply(content, model, usage, time.perf_counter() - started, _rate_limits(headers))

    def _responses_error(self, status: int, raw: bytes, headers: RawHeaders, model: str | None) -> ProviderError:
        """An error on ``/responses``, mapped as on chat completions. A 404 that names the route
        means the endpoint has no Responses API; a refused ``text.format`` is also named as the
        ``response_format`` it came from (the engine then tries its next format)."""
        detail = _error_message(status, raw)
        if status == 404 and "Invalid URL" in detail:
            message = (
                f"HTTP 404: the endpoint {self.base_url} has no Responses API ({detail}): "
                "use endpoint.api = \"chat\""
            )
            return FatalError(message, kind="no", reason="http_404", status_code=status)
        if status in (400, 422) and "text.format" in detail:
            detail = f"{detail} (the response_format, sent as text.format)"
        return self._status_error(status, detail, headers, model=model)

    async def _send(self, url: str, path: str, body: bytes) -> tuple[int, RawHeaders, bytes]:
        """POST ``body`` to ``url`` over the session, or to ``path`` through the SDK off asyncio."""
        if self._session is None:
            return await self._post_with_sdk(path, body)
        return await self._post(url, body)

    async def _post(self, url: str, body: bytes) -> tuple[int, RawHeaders, bytes]:
        assert self._session is not None
        try:
            async with self._session.post(url, data=body, headers=self._chat_headers, proxy=self._proxy) as response:
                return response.status, response.raw_headers, await response.read()
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise self._timeout_error() from None
        except aiohttp.ClientError as exc:
            raise self._connection_error(exc) from exc

    async def _post_with_sdk(self, path: str, body: bytes) -> tuple[int, RawHeaders, bytes]:
        """The call through ``AsyncOpenAI.post``, off asyncio; it raises for statuses >= 400."""
        try:
            with anyio.fail_after(self._timeout_s):  # the whole call, as on asyncio (the SDK's is per read)
                response = await self.sdk.post(path, cast_to=httpx2.Response, content=body, options=self._options)
        except TimeoutError:
            raise self._timeout_error() from None
        except openai.APIStatusError as exc:
            return exc.status_code, exc.response.headers.raw, exc.response.content
        except openai.APIConnectionError as exc:
            raise self._sdk_connection_error(exc) from exc
        return response.status_code, response.headers.raw, response.content

    # -- Files and Batches: the control plane of batch mode ---------------------------------

    def encode_line(self, request: ChatRequest) -> str:
        """A batch line for ``api``'s endpoint; raises ``ProviderError`` (kind ``no``) for a
        request the Responses API cannot take."""
        if self.api == "responses":
            return responses_format.encode_line(request)
        return batch_format.encode_line(request)

    def decode_line(self, line: str) -> tuple[str, dict[str, Any]]:
        return batch_format.decode_line(line)

    def read_results(self, path: Path) -> Iterator[Outcome]:
        return batch_format.read_outcomes(path)

    async def upload_input(self, path: Path, name: str) -> str:
        """Upload a JSONL request file (``purpose="batch"``) as ``name``; returns the file id.

        The SDK is given an open file, which it streams; given a path it would read the whole
        file (up to ``batch.max_bytes_per_file``) into memory first.
        """
        async with self._errors("POST /files"):
            with path.open("rb") as requests:
                uploaded = await self.sdk.files.create(file=(name, requests, "application/jsonl"), purpose="batch")
        return uploaded.id

    async def find_input(self, name: str, size: int, since: float) -> str | None:
        async with self._errors("GET /files"):
            async for uploaded in self.sdk.files.list(purpose="batch", order="desc"):
                if uploaded.created_at < since:
                    return None  # newest first: the rest are older still
                if uploaded.filename == name and uploaded.bytes == size:
                    return uploaded.id
        return None

    async def create_batch(self, input_id: str, tags: Mapping[str, str]) -> BatchJob:
        """A batch on ``api``'s endpoint with a 24 h window; the tags are its ``metadata``."""
        async with self._errors("POST /batches", names_object=True):
            batch = await self.sdk.batches.create(
                input_file_id=input_id,
                endpoint=responses_format.RESPONSES if self.api == "responses" else batch_format.CHAT_COMPLETIONS,
                completion_window="24h",
                metadata=dict(tags),
            )
        return _job(batch)

    async def retrieve_batch(self, batch_id: str) -> BatchJob:
        async with self._errors("GET /batches/{batch_id}", names_object=True):
            return _job(await self.sdk.batches.retrieve(batch_id))

    async def cancel_batch(self, batch_id: str) -> BatchJob:
        async with self._errors("POST /batches/{batch_id}/cancel", names_object=True):
            return _job(await self.sdk.batches.cancel(batch_id))

    async def list_batches(self, tags: Mapping[str, str], since: float) -> AsyncIterator[BatchJob]:
        """The SDK follows the pagination; the list is newest first, so it stops at ``since``."""
        async with self._errors("GET /batches"):
            async for batch in self.sdk.batches.list(limit=100):
                if batch.created_at < since:
                    return
                metadata = batch.metadata or {}
                if all(metadata.get(key) == value for key, value in tags.items()):
                    yield _job(batch)

    async def find_batch(
        self, input_id: str, tags: Mapping[str, str], since: float, known: frozenset[str]
    ) -> BatchJob | None:
        """The batch made from ``input_id`` with ``tags``: found by its metadata and input file."""
        return await made_from(self.list_batches(tags, since), input_id, known)

    async def download_results(self, job: BatchJob, stem: Path) -> list[Path]:
        """The output file as ``<stem>.output.jsonl``, the error file as ``<stem>.errors.jsonl``."""
        paths: list[Path] = []
        for kind, file_id in job.results.items():
            path = stem.with_name(f"{stem.name}.{kind}.jsonl")
            if not path.exists():
                await self._download(file_id, path)
            paths.append(path)
        return paths

    async def download_input(self, input_id: str, path: Path) -> None:
        await self._download(input_id, path)

    async def _download(self, file_id: str, path: Path) -> None:
        """Stream a file's content to ``path``: written to a temporary name, renamed when whole,
        removed when the download fails, so ``path`` never holds part of a file."""
        temporary = path.with_suffix(path.suffix + ".part")
        try:
            async with self._errors("GET /files/{file_id}/content", names_object=True):
                async with self.sdk.files.with_streaming_response.content(file_id) as response:
                    async with await anyio.open_file(temporary, "wb") as out:
                        async for block in response.iter_bytes(1 << 20):
                            await out.write(block)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        temporary.replace(path)

    @asynccontextmanager
    async def _errors(self, route: str, *, names_object: bool = False) -> AsyncIterator[None]:
        """Map the errors of a control-plane call to ``route`` onto ``ProviderError``: the SDK's,
        and the transport's (httpx2, aiohttp) that a streamed body raises past the SDK.

        A 404 means the endpoint has no such route, unless the call names an object
        (``names_object``) and the 404 is an OpenAI error object saying that it does not exist.
        """
        try:
            yield
        except openai.APIStatusError as exc:
            if exc.status_code == 404 and not (names_object and _is_openai_error(exc.body)):
                raise self._batch_api_missing(route) from exc
            raise self._status_error(exc.status_code, exc.message, exc.response.headers.raw) from exc
        except openai.APIConnectionError as exc:
            raise self._sdk_connection_error(exc) from exc
        except (httpx2.TimeoutException, TimeoutError, aiohttp.ServerTimeoutError):
            raise self._timeout_error() from None
        except (httpx2.RequestError, httpx2.StreamError, aiohttp.ClientError) as exc:
            raise self._connection_error(exc) from exc

    def _batch_api_missing(self, route: str) -> BatchApiMissingError:
        message = (
            f"the endpoint {self.base_url} has no Files/Batches API (HTTP 404 on {route}): give it one with "
            f"`python -m engine serve --backend upstream --upstream-url {self.base_url}` and use that server's "
            "URL as --base-url, or run in realtime mode (--mode realtime)"
        )
        return BatchApiMissingError(message, kind="no", reason="http_404", status_code=404)

    def _timeout_error(self) -> ProviderError:
        return timeout_error(self._timeout_s)

    def _connection_error(self, root: BaseException) -> ProviderError:
        return connection_error(root, self._api_key)

    def _sdk_connection_error(self, exc: openai.APIConnectionError) -> ProviderError:
        return sdk_connection_error(exc, openai.APITimeoutError, self._api_key, self._timeout_s)

    def _status_error(self, status: int, detail: str, headers: RawHeaders, *, model: str | None = None) -> ProviderError:
        """``model`` is set for chat calls, where a 404 can only mean an unknown model."""
        message = scrub(f"HTTP {status}: {detail}", self._api_key)
        if status == 404 and model is not None:
            message = f"{message} (the endpoint {self.base_url} does not serve the model {model!r})"
            return ModelNotFoundError(message, kind="no", reason="http_404", status_code=status)
        if status == 401:
            source = f"${self._api_key_env}" if self._api_key_env else "the API key"
            message = f"{message} (the endpoint {self.base_url} rejected the key in {source})"
            return AuthError(message, kind="no", reason="http_401", status_code=status)
        if status == 429:
            return ProviderError(
                message,
                kind="rate_limit",
                reason="http_429",
                status_code=status,
                retry_after=parse_retry_after(header_map(headers)),
                rate_limits=_rate_limits(headers),
            )
        if status >= 500 and _is_validation_error(detail):
            # A server that reports a request it cannot parse as a 5xx (llama-cpp-python does):
            # the same request would be refused again, however often it is sent.
            return ProviderError(message, kind="no", reason="rejected_request", status_code=status)
        kind: ErrorKind = "transient" if status >= 500 or status in (408, 409) else "no"
        return ProviderError(message, kind=kind, reason=f"http_{status}", status_code=status)


_VALIDATION_MARKERS = ("validation error", "input should be", "field required", "extra inputs are not permitted")


def _is_validation_error(detail: str) -> bool:
    """Whether an error message is a request validation error (pydantic's wording, which the
    Python servers answer with)."""
    lowered = detail.lower()
    return any(marker in lowered for marker in _VALIDATION_MARKERS)



def _is_openai_error(body: object) -> bool:
    """Whether an error reply's body is OpenAI's ``{"error": {...}}`` (the SDK passes either
    the whole body or its ``error`` object)."""
    if not isinstance(body, dict):
        return False
    error = body.get("error", body)
    return isinstance(error, dict) and isinstance(error.get("message"), str)


def _error_message(status: int, raw: bytes) -> str:
    """The SDK's wording for an error response: the code, and the body's ``error.message``."""
    message = f"Error code: {status}"
    try:
        body = json.loads(raw)
    except ValueError:
        return message
    error = body.get("error", body) if isinstance(body, dict) else None
    detail = error.get("message") if isinstance(error, dict) else None
    return f"{message} - {detail}" if isinstance(detail, str) and detail else message



def _rate_limits(headers: RawHeaders) -> RateLimits | None:
    """The ``x-ratelimit-{limit,remaining}-{requests,tokens}`` headers; None when there are none.

    One pass over the raw headers: this runs for every response.
    """
    found: dict[str, float] = {}
    for key, value in headers:
        if key[:12].lower() == _RATE_LIMIT_PREFIX and (name := _RATE_LIMIT_FIELDS.get(key[12:].lower())):
            try:
                number = float(value)
            except ValueError:
                continue
            if 0.0 <= number < math.inf:
                found[name] = number
    return RateLimits(**found) if found else None


def _job(batch: Batch) -> BatchJob:
    """OpenAI's batch object -> the engine's."""
    counts = batch.request_counts
    errors = tuple(
        f"line {error.line}: {error.message}" if error.line else str(error.message)
        for error in (batch.errors.data or [] if batch.errors else [])
    )
    results = {"output": batch.output_file_id, "errors": batch.error_file_id}
    return BatchJob(
        id=batch.id,
        status=batch.status,
        input_id=batch.input_file_id,
        created_at=batch.created_at,
        tags=dict(batch.metadata or {}),
        counts=BatchCounts(counts.total, counts.completed, counts.failed) if counts else None,
        in_progress_at=batch.in_progress_at,
        finished_at=batch.completed_at or batch.failed_at or batch.expired_at or batch.cancelled_at,
        errors=errors,
        results={kind: file_id for kind, file_id in results.items() if file_id},
    )


def _parse_completion(raw: bytes, latency_s: float, rate_limits: RateLimits | None) -> ChatReply:
    try:
        payload = fastjson.loads(raw)
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
    return ChatReply(content, model, batch_format.chat_usage(usage), latency_s, rate_limits, batch_format.read_logprobs(choice))
