"""``engine.provider.Provider`` for Anthropic's Messages API and Message Batches, with the official
``anthropic`` SDK.

The design is the OpenAI adapter's: the SDK owns the endpoint (base URL, authentication and
version headers, every control-plane call), and the hot path, one Messages call per request, is
sent with the URL and headers the SDK built once over an aiohttp session on asyncio (through the
SDK's ``post`` elsewhere). The SDK's retries are off; every error is mapped once onto
``ProviderError`` with its retry kind, and no message carries the key. Requests and replies are
translated by :mod:`.messages_format`.

Message Batches differ from OpenAI's Batch API in three ways the engine sees:

- **No files.** Requests travel inline in the create call, so ``upload_input`` uploads nothing:
  the input id is the request file's own path, which ``create_batch`` reads (at most
  ``MAX_BATCH_REQUESTS`` requests and ``MAX_BATCH_BYTES`` bytes). Message Batches keep no copy of
  the requests, so ``download_input`` can only copy that file back.
- **Custom ids** must match ``^[a-zA-Z0-9_-]{1,64}$``: each is sent as ``anthropic_id`` of the
  engine's, and the results are mapped back through the request file they came from.
- **No metadata.** A batch carries no tags and no input id: ``list_batches`` with tags finds
  nothing, and a batch whose create reply was lost is found by its content instead
  (``find_batch``).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Final

import aiohttp
import anthropic
import anyio
import anyio.to_thread
import httpx2
import sniffio
from anthropic.types.messages import MessageBatch

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
from engine.provider import BatchCounts, BatchJob, ChatReply, RateLimits
from engine.run.retry import is_transient, parse_retry_after
from engine.types import ChatRequest, Outcome

from . import messages_format
from .messages_format import MAX_BATCH_BYTES, MAX_BATCH_REQUESTS, anthropic_id

_MESSAGES: Final = "/v1/messages"
_BATCHES: Final = "/v1/messages/batches"
_RATE_LIMIT_PREFIX: Final = b"anthropic-ratelimit-"
_RATE_LIMIT_FIELDS: Final = {
    b"requests-limit": "limit_requests",
    b"requests-remaining": "remaining_requests",
    b"tokens-limit": "limit_tokens",
    b"tokens-remaining": "remaining_tokens",
}
# Where an endpoint gives no ``tokens-*`` budgets, its input-token ones stand in for them.
_RATE_LIMIT_FALLBACKS: Final = {
    b"input-tokens-limit": "limit_tokens",
    b"input-tokens-remaining": "remaining_tokens",
}



def sdk_base_url(base_url: str) -> str:
    """The SDK's base URL for ours: the SDK's paths begin with ``/v1``, so a trailing ``/v1``
    (the config's convention, as for OpenAI) is dropped."""
    return base_url.rstrip("/").removesuffix("/v1")


class AnthropicProvider:
    """``engine.provider.Provider`` for one Anthropic endpoint and key. Create it inside the
    event loop that will use it."""

    def __init__(self, base_url: str, api_key: str, *, api_key_env: str = "", timeout_s: float = 60.0) -> None:
        """``base_url`` with or without its ``/v1``; ``api_key_env`` names the variable the key
        came from, for the 401 message."""
        self.base_url = base_url
        self._api_key = api_key
        self._api_key_env = api_key_env
        self._timeout_s = timeout_s
        on_asyncio = sniffio.current_async_library() == "asyncio"
        self._http_client_type = anthropic.DefaultAioHttpClient if on_asyncio else anthropic.DefaultAsyncHttpxClient
        self._sdk: anthropic.AsyncAnthropic | None = None
        endpoint = self._build_sdk(unsent_http_client())
        self._messages_url = str(endpoint.base_url.join(_MESSAGES.lstrip("/")))
        self._headers = {
            name: value
            for name, value in {**endpoint.default_headers, **endpoint.auth_headers}.items()
            if isinstance(value, str)  # the SDK marks headers it leaves out with Omit()
        }
        self._session: aiohttp.ClientSession | None = None
        if on_asyncio:
            # As the OpenAI adapter's: the limiter bounds the connections, ``timeout_s`` the whole call.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),
                timeout=aiohttp.ClientTimeout(total=timeout_s, sock_connect=timeout_s),
            )
        self._proxy = env_proxy(self._messages_url)

    @property
    def sdk(self) -> anthropic.AsyncAnthropic:
        """The SDK client, built on first use, as the OpenAI adapter's: a realtime run on asyncio
        never needs its HTTP client."""
        if self._sdk is None:
            self._sdk = self._build_sdk(self._http_client_type(timeout=self._timeout_s))
        return self._sdk

    def _build_sdk(self, http_client: httpx2.AsyncClient) -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(
            base_url=sdk_base_url(self.base_url),
            api_key=self._api_key,
            max_retries=0,
            timeout=self._timeout_s,
            http_client=http_client,
        )

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):  # a cancelled run still closes its connections
            if self._session is not None:
                await self._session.close()
            if self._sdk is not None:
                await self._sdk.close()

    async def __aenter__(self) -> AnthropicProvider:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- realtime ----------------------------------------------------------------------------

    async def complete(self, request: ChatRequest) -> ChatReply:
        """One Messages call; raises ``ProviderError`` with a retry kind on any failure."""
        started = time.perf_counter()
        body = fastjson.dumps(messages_format.to_params(request.body))
        if self._session is None:
            status, headers, raw = await self._post_with_sdk(body)
        else:
            status, headers, raw = await self._post(body)
        if status >= 400:
            error_type, detail = _error_of(raw)
            raise self._status_error(status, error_type, detail, headers, model=request.body.get("model"))
        return _parse_message(raw, time.perf_counter() - started, _rate_limits(headers))

    async def _post(self, body: bytes) -> tuple[int, RawHeaders, bytes]:
        assert self._session is not None
        try:
            async with self._session.post(self._messages_url, data=body, headers=self._headers, proxy=self._proxy) as response:
                return response.status, response.raw_headers, await response.read()
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise self._timeout_error() from None
        except aiohttp.ClientError as exc:
            raise self._connection_error(exc) from exc

    async def _post_with_sdk(self, body: bytes) -> tuple[int, RawHeaders, bytes]:
        """The Messages call through ``AsyncAnthropic.post``, off asyncio; it raises for statuses >= 400."""
        try:
            with anyio.fail_after(self._timeout_s):  # the whole call, as on asyncio (the SDK's is per read)
                response = await self.sdk.post(_MESSAGES, cast_to=httpx2.Response, content=body)
        except TimeoutError:
            raise self._timeout_error() from None
        except anthropic.APIStatusError as exc:
            return exc.status_code, exc.response.headers.raw, exc.response.content
        except anthropic.APIConnectionError as exc:
            raise self._sdk_connection_error(exc) from exc
        return response.status_code, response.headers.raw, response.content

    # -- Message Batches: the control plane of batch mode -------------------------------------

    def encode_line(self, request: ChatRequest) -> str:
        return messages_format.encode_line(request)

    def decode_line(self, line: str) -> tuple[str, dict[str, Any]]:
        return messages_format.decode_line(line)

    def read_results(self, path: Path) -> Iterator[Outcome]:
        return messages_format.read_outcomes(path)

    async def upload_input(self, path: Path, name: str) -> str:
        """Nothing to upload (a batch's requests travel in its create call): the input id is the
        request file's absolute path."""
        return str(await anyio.Path(path).resolve())

    async def find_input(self, name: str, size: int, since: float) -> str | None:
        return None  # nothing is ever uploaded

    async def create_batch(self, input_id: str, tags: Mapping[str, str]) -> BatchJob:
        """A Message Batch of the requests in the file ``input_id``, each under its
        ``anthropic_id``; refused (kind ``no``) beyond Anthropic's limits. The tags are not sent
        (a batch has no metadata) but are on the job returned."""
        path = Path(input_id)
        body, count = await anyio.to_thread.run_sync(_create_body, path)
        if count > MAX_BATCH_REQUESTS:
            raise ProviderError(
                f"{path.name} has {count:,} requests; a Message Batch takes at most {MAX_BATCH_REQUESTS:,}: "
                f"set batch.max_requests_per_file to {MAX_BATCH_REQUESTS} or less",
                kind="no", reason="batch_too_large",
            )
        if len(body) > MAX_BATCH_BYTES:
            raise ProviderError(
                f"the requests of {path.name} take {len(body):,} bytes; a Message Batch takes at most "
                f"{MAX_BATCH_BYTES:,}: lower batch.max_bytes_per_file",
                kind="no", reason="batch_too_large",
            )
        async with self._errors(f"POST {_BATCHES}"):
            batch = await self.sdk.post(_BATCHES, cast_to=MessageBatch, content=body)
        return replace(_job(batch), input_id=input_id, tags=dict(tags))

    async def retrieve_batch(self, batch_id: str) -> BatchJob:
        async with self._errors(f"GET {_BATCHES}/{{id}}", names_object=True):
            return _job(await self.sdk.messages.batches.retrieve(batch_id))

    async def cancel_batch(self, batch_id: str) -> BatchJob:
        async with self._errors(f"POST {_BATCHES}/{{id}}/cancel", names_object=True):
            return _job(await self.sdk.messages.batches.cancel(batch_id))

    async def list_batches(self, tags: Mapping[str, str], since: float) -> AsyncIterator[BatchJob]:
        """Message Batches carry no tags: with ``tags`` none is known to carry them, and nothing
        is listed; without, every batch created after ``since``, newest first (the SDK follows
        the pages; the list is newest first, so it stops at ``since``)."""
        if tags:
            return
        async with self._errors(f"GET {_BATCHES}"):
            async for batch in self.sdk.messages.batches.list(limit=100):
                if batch.created_at.timestamp() < since:
                    return
                yield _job(batch)

    async def find_batch(self, input_id: str, tags: Mapping[str, str], since: float, known: frozenset[str]) -> BatchJob | None:
        """The batch made from ``input_id`` after ``since`` whose create reply was lost, if any;
        ``known`` are batch ids the run already has.

        A batch says nothing of its requests until it ends, so it is matched by its size: the
        oldest batch created after ``since``, not in ``known``, with as many requests as the
        file has lines. Two chunks of the same size created in the same moment cannot be told
        apart: a wrong adoption shows, once the batch ends, as lines missing from its results
        (their ids are another file's), which the engine retries.
        """
        if not await anyio.Path(input_id).is_file():
            return None
        lines = await anyio.to_thread.run_sync(_count_lines, Path(input_id))
        found: BatchJob | None = None
        async for batch in self.list_batches({}, since):
            if batch.id not in known and batch.counts is not None and batch.counts.total == lines:
                found = batch  # newest first: the last one found is the oldest
        return None if found is None else replace(found, input_id=input_id, tags=dict(tags))

    async def download_results(self, job: BatchJob, stem: Path) -> list[Path]:
        """The batch's results as ``<stem>.results.jsonl``, each line under the engine's
        custom_id, mapped back through the request file ``<stem>.jsonl``; lines of ids not in it
        are dropped. Written to a temporary name and renamed when whole; a file already there is
        not downloaded again."""
        path = stem.with_name(f"{stem.name}.results.jsonl")
        if path.exists():
            return [path]
        if "results" not in job.results:
            return []
        requests = stem.with_name(stem.name + ".jsonl")
        if not await anyio.Path(requests).is_file():
            raise ProviderError(
                f"the results of batch {job.id} cannot be mapped back: its request file {requests.name} is missing",
                kind="no", reason="input_missing",
            )
        engine_ids = await anyio.to_thread.run_sync(_engine_ids, requests)
        temporary = path.with_suffix(path.suffix + ".part")
        try:
            async with self._errors(f"GET {_BATCHES}/{{id}}/results", names_object=True):
                async with self.sdk.messages.batches.with_streaming_response.results(job.id) as response:
                    async with await anyio.open_file(temporary, "w", encoding="utf-8") as out:
                        async for line in response.iter_lines():
                            if line.strip() and (mapped := _mapped_line(line, engine_ids)) is not None:
                                await out.write(mapped + "\n")
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        temporary.replace(path)
        return [path]

    async def download_input(self, input_id: str, path: Path) -> None:
        """Copy the request file back from ``input_id`` (its path) where it still exists;
        Message Batches keep no copy of the requests, so otherwise it is gone (kind ``no``)."""
        if not input_id or not await anyio.Path(input_id).is_file():
            raise ProviderError(
                f"Message Batches keep no copy of a batch's requests, and {input_id or 'its request file'} is gone",
                kind="no", reason="input_missing",
            )
        temporary = path.with_suffix(path.suffix + ".part")
        try:
            await anyio.to_thread.run_sync(shutil.copyfile, input_id, temporary)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        temporary.replace(path)

    # -- errors --------------------------------------------------------------------------------

    @asynccontextmanager
    async def _errors(self, route: str, *, names_object: bool = False) -> AsyncIterator[None]:
        """Map the errors of a control-plane call to ``route`` onto ``ProviderError``: the SDK's,
        and the transport's (httpx2, aiohttp) that a streamed body raises past the SDK.

        A 404 means the endpoint has no such route, unless the call names an object
        (``names_object``) and the 404 is an Anthropic error object saying that it does not exist.
        """
        try:
            yield
        except anthropic.APIStatusError as exc:
            error_type, detail = messages_format.error_detail(exc.body)
            if exc.status_code == 404 and not (names_object and error_type is not None):
                raise self._batch_api_missing(route) from exc
            raise self._status_error(exc.status_code, error_type, detail or exc.message, exc.response.headers.raw) from exc
        except anthropic.APIConnectionError as exc:
            raise self._sdk_connection_error(exc) from exc
        except (httpx2.TimeoutException, TimeoutError, aiohttp.ServerTimeoutError):
            raise self._timeout_error() from None
        except (httpx2.RequestError, httpx2.StreamError, aiohttp.ClientError) as exc:
            raise self._connection_error(exc) from exc

    def _batch_api_missing(self, route: str) -> BatchApiMissingError:
        message = (
            f"the endpoint {self.base_url} has no Message Batches API (HTTP 404 on {route}): "
            "run in realtime mode (--mode realtime) or use an endpoint that has one"
        )
        return BatchApiMissingError(message, kind="no", reason="http_404", status_code=404)

    def _timeout_error(self) -> ProviderError:
        return timeout_error(self._timeout_s)

    def _connection_error(self, root: BaseException) -> ProviderError:
        return connection_error(root, self._api_key)

    def _sdk_connection_error(self, exc: anthropic.APIConnectionError) -> ProviderError:
        return sdk_connection_error(exc, anthropic.APITimeoutError, self._api_key, self._timeout_s)

    def _status_error(
        self, status: int, error_type: str | None, detail: str, headers: RawHeaders, *, model: str | None = None
    ) -> ProviderError:
        """An error reply as a ``ProviderError``: ``error_type`` is Anthropic's (None when the
        body is not its error object); ``model`` is set for Messages calls, where a 404 in
        Anthropic's shape can only mean an unknown model."""
        message = scrub(f"HTTP {status}: {error_type}: {detail}" if error_type else f"HTTP {status}: {detail}", self._api_key)
        if status == 404 and model is not None:
            if error_type is None:
                message = f"{message} (the endpoint {self.base_url} has no Messages API: is it Anthropic's?)"
                return FatalError(message, kind="no", reason="http_404", status_code=status)
            message = f"{message} (the endpoint {self.base_url} does not serve the model {model!r})"
            return ModelNotFoundError(message, kind="no", reason="http_404", status_code=status)
        if status == 401:
            source = f"${self._api_key_env}" if self._api_key_env else "the API key"
            message = f"{message} (the endpoint {self.base_url} rejected the key in {source})"
            return AuthError(message, kind="no", reason="http_401", status_code=status)
        retry_after = parse_retry_after(header_map(headers)) if status == 429 or status >= 500 else None
        if status == 429:
            return ProviderError(
                message, kind="rate_limit", reason="http_429", status_code=status,
                retry_after=retry_after, rate_limits=_rate_limits(headers),
            )
        kind: ErrorKind = "transient" if is_transient(f"http_{status}", status) else "no"
        return ProviderError(message, kind=kind, reason=f"http_{status}", status_code=status, retry_after=retry_after)



def _error_of(raw: bytes) -> tuple[str | None, str]:
    """An error reply's Anthropic error type and message; for a body that is not Anthropic's
    error object, None and the start of the body."""
    try:
        error_type, message = messages_format.error_detail(json.loads(raw))
    except ValueError:
        error_type, message = None, ""
    return (error_type, message) if error_type else (None, raw[:200].decode("utf-8", "replace") or "no body")



def _rate_limits(headers: RawHeaders) -> RateLimits | None:
    """The ``anthropic-ratelimit-{requests,tokens}-{limit,remaining}`` headers (the
    ``input-tokens-*`` ones where ``tokens-*`` are missing); None when there are none. One pass
    over the raw headers: this runs for every response."""
    found: dict[str, float] = {}
    fallbacks: dict[str, float] = {}
    size = len(_RATE_LIMIT_PREFIX)
    for key, value in headers:
        if key[:size].lower() != _RATE_LIMIT_PREFIX:
            continue
        suffix = key[size:].lower()
        into = found if suffix in _RATE_LIMIT_FIELDS else fallbacks
        name = _RATE_LIMIT_FIELDS.get(suffix) or _RATE_LIMIT_FALLBACKS.get(suffix)
        if name is None:
            continue
        try:
            number = float(value)
        except ValueError:
            continue
        if 0.0 <= number < math.inf:
            into[name] = number
    merged = {**fallbacks, **found}
    return RateLimits(**merged) if merged else None


def _parse_message(raw: bytes, latency_s: float, rate_limits: RateLimits | None) -> ChatReply:
    try:
        content, model, usage = messages_format.read_message(fastjson.loads(raw))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        snippet = raw[:80].decode("utf-8", "replace")
        raise ProviderError(f"response is not a Message: {snippet!r}", kind="transient", reason="malformed_body") from exc
    if not content.strip():
        raise ProviderError("the Message has no content", kind="transient", reason="empty_response")
    return ChatReply(content, model, usage, latency_s, rate_limits)


def _job(batch: MessageBatch) -> BatchJob:
    """A Message Batch -> the engine's batch (without input id or tags: the API keeps neither).

    Anthropic's batches begin processing when created; one that ended is ``cancelled`` if its
    cancellation was asked for, else ``completed`` (expired lines fail one by one)."""
    counts = batch.request_counts
    if batch.processing_status == "in_progress":
        status = "in_progress"
    elif batch.processing_status == "canceling":
        status = "cancelling"
    else:
        status = "cancelled" if batch.cancel_initiated_at is not None else "completed"
    created_at = batch.created_at.timestamp()
    return BatchJob(
        id=batch.id,
        status=status,
        input_id="",
        created_at=created_at,
        counts=BatchCounts(
            total=counts.processing + counts.succeeded + counts.errored + counts.canceled + counts.expired,
            completed=counts.succeeded,
            failed=counts.errored + counts.canceled + counts.expired,
        ),
        in_progress_at=created_at,
        finished_at=batch.ended_at.timestamp() if batch.ended_at is not None else None,
        results={"results": batch.results_url} if batch.processing_status == "ended" and batch.results_url else {},
    )


def _salt(path: Path) -> str:
    """What sets a request file's batch apart from any other run's: its run directory's name and
    its own (``<run>/batches/<chunk>.jsonl``). A batch of another run adopted by mistake (its
    create found by content, ``find_batch``) then maps no line back: its lines show as missing
    and are retried, never read as this run's."""
    return f"{path.parent.parent.name}/{path.stem}"


def _create_body(path: Path) -> tuple[bytes, int]:
    """The create request's body for a request file, and how many requests it holds."""
    requests = []
    salt = _salt(path)
    with path.open(encoding="utf-8") as source:
        for line in source:
            if line.strip():
                decoded = json.loads(line)
                requests.append({"custom_id": anthropic_id(str(decoded["custom_id"]), salt), "params": decoded["params"]})
    return json.dumps({"requests": requests}, ensure_ascii=False).encode(), len(requests)


def _count_lines(path: Path) -> int:
    with path.open(encoding="utf-8") as source:
        return sum(1 for line in source if line.strip())


def _engine_ids(path: Path) -> dict[str, str]:
    """``anthropic_id`` -> the engine's custom_id, for every line of a request file."""
    salt = _salt(path)
    with path.open(encoding="utf-8") as source:
        ids = (str(json.loads(line)["custom_id"]) for line in source if line.strip())
        return {anthropic_id(custom_id, salt): custom_id for custom_id in ids}


def _mapped_line(line: str, engine_ids: Mapping[str, str]) -> str | None:
    """A result line under the engine's custom_id; None for an id not in the request file."""
    try:
        decoded = json.loads(line)
        engine_id = engine_ids.get(decoded["custom_id"])
    except (ValueError, KeyError, TypeError) as exc:
        message = "a result line is not a JSON object with a custom_id"
        raise ProviderError(message, kind="transient", reason="malformed_body") from exc
    if engine_id is None:
        return None
    return json.dumps({**decoded, "custom_id": engine_id}, ensure_ascii=False)
