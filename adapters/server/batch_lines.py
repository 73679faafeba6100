"""The lines of a batch: checking an input file, running one line, keeping and splitting results.

An input line is ``{"custom_id", "method": "POST", "url", "body"}``. An output line is
``{"id": "batch_req_…", "custom_id", "response": {"status_code", "request_id", "body"} | null,
"error": {"code", "message"} | null}``; a line succeeded when its response has status 200. The
synchronous functions read whole files: run them in a worker thread.

A line's ``url`` names the API it calls, a key of ``LINE_APIS``: chat completions here, and each
other API shape the server speaks registers its own (``/v1/responses``, ``/v1/messages``), as a
translation to and from the backend's chat completions.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import anyio

from . import wire
from .backends.base import (
    Backend,
    BackendError,
    BackendReply,
    BatchPolicy,
    DropConnection,
    Hang,
    MalformedReply,
    TruncatedReply,
)
from .chat_request import Problem, chat_problem
from .prompt_cache import PromptCache, chat_segments

__all__ = [
    "LINE_APIS",
    "Checked",
    "Line",
    "LineApi",
    "LineError",
    "ResultsLog",
    "check_input",
    "failure_line",
    "read_lines",
    "run_line",
    "split_results",
    "succeeded",
]

MAX_REPORTED_ERRORS = 100
_CHUNK = 1 << 20
_DEFAULT_RETRY_AFTER_S = 1.0
_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LineApi:
    """One API a batch line may call: ``problem`` says what is wrong with a body (None: nothing;
    given the backend's known models), ``to_chat`` turns it into the chat body the backend
    answers, ``render`` turns the reply into the API's answer object (for the reply, its request
    id, the line's body and the server's prompt cache)."""

    problem: Callable[[Any, tuple[str, ...] | None], Problem | None]
    to_chat: Callable[[dict[str, Any]], dict[str, Any]]
    render: Callable[[BackendReply, str, dict[str, Any], PromptCache], dict[str, Any]]


def _render_chat(reply: BackendReply, request_id: str, body: dict[str, Any], cache: PromptCache) -> dict[str, Any]:
    cached = 0 if reply.reply is not None else cache.automatic(chat_segments(body["messages"]), reply.prompt_tokens).read
    return wire.chat_completion(reply, request_id, cached)


#: The APIs batch lines may call, by ``url``.
LINE_APIS: dict[str, LineApi] = {"/v1/chat/completions": LineApi(chat_problem, lambda body: body, _render_chat)}


@dataclass(frozen=True, slots=True)
class LineError:
    """One problem with an input file, as in a batch's ``errors``; ``line`` counts from 1."""

    code: str
    message: str
    line: int | None = None
    param: str | None = None

    def to_openai(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "param": self.param, "line": self.line}


@dataclass(frozen=True, slots=True)
class Checked:
    """What checking an input file found: its request count, first model, and problems."""

    total: int
    model: str | None
    errors: tuple[LineError, ...]


@dataclass(frozen=True, slots=True)
class Line:
    """One input line that passed the check."""

    custom_id: str
    body: dict[str, Any]
    url: str = "/v1/chat/completions"


def check_input(
    path: Path, endpoint: str, *, max_requests: int, max_bytes: int, max_line_bytes: int
) -> Checked:
    """Check every line of ``path`` against OpenAI's rules; report the first problem of each line.

    Beyond ``MAX_REPORTED_ERRORS`` problems the rest are not reported; the check stops at the line
    after ``max_requests``. It holds one line at a time, and no more than ``max_line_bytes`` of one.
    """
    if path.stat().st_size > max_bytes:
        message = f"The input file is larger than {max_bytes} bytes."
        return Checked(0, None, (LineError("file_too_large", message),))
    errors: list[LineError] = []
    seen: set[str] = set()
    model: str | None = None
    total = 0
    with open(path, "rb") as lines:
        for number, raw in enumerate(_bounded_lines(lines, max_line_bytes), 1):
            if number > max_requests:
                message = f"The input file has more than {max_requests} requests."
                errors.append(LineError("too_many_requests_in_file", message, number))
                break
            total = number
            problem, found = _check_line(raw, endpoint, seen, max_line_bytes)
            if problem is not None and len(errors) < MAX_REPORTED_ERRORS:
                errors.append(LineError(problem[0], problem[2], number, problem[1]))
            model = model or found
    if total == 0:
        errors.append(LineError("empty_file", "The input file has no requests."))
    return Checked(total, model, tuple(errors))


def _bounded_lines(source: BinaryIO, limit: int) -> Iterator[bytes]:
    """The lines of ``source``; of a line longer than ``limit`` bytes, only its first ``limit + 1``."""
    while raw := source.readline(limit + 1):
        yield raw
        while not raw.endswith(b"\n") and (raw := source.readline(_CHUNK)):
            pass


def _check_line(
    raw: bytes, endpoint: str, seen: set[str], max_line_bytes: int
) -> tuple[tuple[str, str | None, str] | None, str | None]:
    """``((code, param, message) or None, model or None)`` for a line; adds its id to ``seen``."""
    if len(raw) > max_line_bytes:
        return ("line_too_large", None, f"This line is longer than {max_line_bytes} bytes."), None
    try:
        request = wire.parse_json(raw)
    except ValueError:
        return ("invalid_json_line", None, "This line is not parseable as valid JSON."), None
    if not isinstance(request, dict):
        return ("invalid_json_line", None, "This line is not a JSON object."), None
    custom_id = request.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return ("invalid_custom_id", "custom_id", "`custom_id` must be a non-empty string."), None
    if custom_id in seen:
        message = f"The custom_id `{custom_id}` is a duplicate of another request's: each must be unique."
        return ("duplicate_custom_id", "custom_id", message), None
    seen.add(custom_id)
    if request.get("method") != "POST":
        return ("invalid_method", "method", "`method` must be `POST`."), None
    if request.get("url") != endpoint:
        return ("invalid_url", "url", f"`url` must be the batch's endpoint, `{endpoint}`."), None
    body = request.get("body")
    if not isinstance(body, dict):
        return ("invalid_body", "body", "`body` must be a JSON object."), None
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return ("missing_model", "body.model", "`body.model` must be a non-empty string."), None
    return None, model


async def read_lines(path: Path) -> AsyncIterator[Line]:
    """The lines of a checked input file, read in large chunks off the event loop.

    No file stays open across a ``yield``: a feeder stopped between two lines (a batch cancelled,
    its server stopped) may leave this generator for the collector, never a file with it."""
    carry, offset = b"", 0
    while chunk := await anyio.to_thread.run_sync(_read_chunk, path, offset):
        offset += len(chunk)
        *whole, carry = (carry + chunk).split(b"\n")
        for raw in whole:
            yield _parse(raw)
    if carry.strip():
        yield _parse(carry)


def _read_chunk(path: Path, offset: int) -> bytes:
    with open(path, "rb") as source:
        source.seek(offset)
        return source.read(_CHUNK)


def _parse(raw: bytes) -> Line:
    request = json.loads(raw)
    return Line(request["custom_id"], request["body"], request["url"])


async def run_line(
    backend: Backend, policy: BatchPolicy, line: Line, attempt: int = 1, cache: PromptCache | None = None
) -> dict[str, Any]:
    """Run ``line`` (the ``attempt``-th run of its custom_id) against ``backend`` through the API
    its ``url`` names, and return its output line; never raises but cancellation. ``cache``
    reports the prompt's cached tokens (none without one).

    A 429 is waited out (its ``retry-after-ms`` or ``Retry-After``) and tried again, as a
    provider's batch does; every other failure is a failed output line.
    """
    request_id = secrets.token_hex(12)
    if policy.fails(line.custom_id, attempt):
        body = wire.error_body("Simulated failure of a batch line.", type="server_error")
        return _response(line, request_id, 500, body)
    api = LINE_APIS[line.url]
    if (problem := api.problem(line.body, backend.models)) is not None:
        return _response(line, request_id, problem.status, problem.body())
    while True:
        try:
            completion = await backend.complete(api.to_chat(line.body))
        except BackendError as exc:
            if exc.status == 429:
                await anyio.sleep(_retry_after(exc))
                continue
            body = wire.error_body(exc.message, type=exc.type, code=exc.code, param=exc.param)
            return _response(line, request_id, exc.status, body)
        except DropConnection:
            message = "The backend closed the connection without a response."
            return failure_line(line.custom_id, "connection_reset", message)
        except MalformedReply:
            return failure_line(line.custom_id, "malformed_response", "The backend's response was not JSON.")
        except TruncatedReply:
            return failure_line(line.custom_id, "truncated_response", "The backend's response was cut off.")
        except Hang:
            return failure_line(line.custom_id, "timeout", "The backend did not answer.")
        except Exception:
            _log.exception("backend %s failed on a batch line", backend.name)
            body = wire.error_body(f"The {backend.name} backend failed.", type="server_error")
            return _response(line, request_id, 500, body)
        return _response(line, request_id, 200, api.render(completion, request_id, line.body, cache or PromptCache(0)))


def failure_line(custom_id: str, code: str, message: str) -> dict[str, Any]:
    """An output line for a request that got no response."""
    return {
        "id": f"batch_req_{secrets.token_hex(12)}",
        "custom_id": custom_id,
        "response": None,
        "error": {"code": code, "message": message},
    }


def _response(line: Line, request_id: str, status: int, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": f"batch_req_{request_id}",
        "custom_id": line.custom_id,
        "response": {"status_code": status, "request_id": f"req_{request_id}", "body": body},
        "error": None,
    }


def _retry_after(exc: BackendError) -> float:
    headers = {name.lower(): value for name, value in exc.headers}
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        try:
            return max(0.0, float(headers[name]) / scale)
        except (KeyError, ValueError):
            continue
    return _DEFAULT_RETRY_AFTER_S


def succeeded(output: dict[str, Any]) -> bool:
    """Whether an output line belongs in the output file (else the error file)."""
    response = output.get("response")
    return isinstance(response, dict) and response.get("status_code") == 200


class ResultsLog:
    """A batch's finished lines, appended as NDJSON the moment each finishes (resume reads it).

    An append writes one short line to the OS and returns: it is done on the event loop, since
    a thread hop per line would cost the loop more than the write (there is no fsync).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._out: BinaryIO | None = None

    def scan(self) -> tuple[set[str], int, int]:
        """``(custom ids done, succeeded, failed)``; cuts off a line torn by a crash mid-append."""
        done: set[str] = set()
        ok = failed = 0
        good = 0
        if not self.path.exists():
            return done, ok, failed
        with open(self.path, "r+b") as log:
            for raw in log:
                try:
                    output = json.loads(raw) if raw.endswith(b"\n") else None
                except ValueError:
                    output = None
                if output is None:
                    break
                good += len(raw)
                done.add(output["custom_id"])
                ok, failed = (ok + 1, failed) if succeeded(output) else (ok, failed + 1)
            log.truncate(good)
        return done, ok, failed

    async def __aenter__(self) -> ResultsLog:
        self._out = await anyio.to_thread.run_sync(open, self.path, "ab")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._out is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._out.close)

    def append(self, output: dict[str, Any]) -> None:
        """Append one output line and flush it to the OS: it survives the process, not the machine."""
        assert self._out is not None, "ResultsLog used outside `async with`"
        self._out.write(json.dumps(output).encode() + b"\n")
        self._out.flush()


def split_results(
    log: Path, output: Path, errors: Path, *, expired_input: Path | None = None
) -> tuple[int, int]:
    """Copy ``log`` into the ``output`` and ``errors`` files in completion order; return their line counts.

    With ``expired_input`` (the input file of an expired batch), every request of it missing from
    ``log`` adds a ``batch_expired`` error line.
    """
    done: set[str] = set()
    counts = [0, 0]
    with open(output, "wb") as ok_out, open(errors, "wb") as err_out:
        for raw in _lines_of(log):
            line = json.loads(raw)
            done.add(line["custom_id"])
            good = succeeded(line)
            (ok_out if good else err_out).write(raw.rstrip(b"\n") + b"\n")
            counts[0 if good else 1] += 1
        if expired_input is not None:
            message = "This request was not executed before the batch expired."
            for raw in _lines_of(expired_input):
                custom_id = json.loads(raw)["custom_id"]
                if custom_id not in done:
                    line = failure_line(custom_id, "batch_expired", message)
                    err_out.write(json.dumps(line).encode() + b"\n")
                    counts[1] += 1
    return counts[0], counts[1]


def _lines_of(path: Path) -> Iterator[bytes]:
    if not path.exists():
        return
    with open(path, "rb") as source:
        yield from (raw for raw in source if raw.strip())
