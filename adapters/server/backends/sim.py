"""The simulator backend, for tests and benchmarks: answers drawn from the prompt, limits, faults.

Everything it answers says it is simulated: ``model`` is ``"sim:" + requested model``. Answers are
a stable hash (blake2b) of ``(seed, model, messages)``, so the same request gets the same answer in
every process; it never reads ground truth. In order of precedence it answers:

1. a ``response_format`` whose schema has an ``enum`` (on the schema, or on its one enum-carrying
   property): one enum value, JSON-encoded. The schema is ``json_schema.schema`` for a
   ``json_schema`` format, ``schema`` for a ``json_object`` one (llama-cpp-python's extension);
2. a judge prompt (the words "correct" and "incorrect" both appear): ``"correct"`` with probability
   ``judge_correct_rate``, else ``"incorrect"``;
3. the options listed in the prompt (the longest comma-separated run of at least 3 short items):
   one of them;
4. otherwise ``"simulated answer"``.

A ``json_object`` format without an enum gets the answer wrapped as ``{"answer": ...}``. A
``response_format`` type outside ``response_formats`` is refused as llama-cpp-python's server
refuses one: HTTP 500, ``internal_server_error``, pydantic's "Input should be ..." message.

Its ``batch_policy`` (from the ``batch_*`` settings) makes the server's batches slow, expire, fail
lines or stall in ``validating``; by default batches behave.

Rate limits are token buckets like a provider's (a 429 charges nothing). With ``slots`` set, at
most that many admitted requests are answered at once, each holding its slot for its latency; the
others wait, first come first served, without holding the event loop (like llama.cpp's server).

Faults (5xx, resets, malformed or truncated bodies, empty ``choices``, null content, requests never
answered) and latency jitter are drawn from a hash of ``(seed, request body, attempt)``, where the
attempt counts the admitted requests with the same body before this one. So a request gets the
same fault on its n-th attempt whatever the order or concurrency of the requests around it, and
a faulty run is reproducible. (The server never sees a realtime call's custom_id: the body is
the request's identity. A 429 is not an attempt: which requests get one depends on timing.) The
backend keeps one counter per distinct body while faults or jitter are on.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import math
import random
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .base import (
    BackendError,
    BackendReply,
    BatchPolicy,
    DropConnection,
    Hang,
    Headers,
    MalformedReply,
    TruncatedReply,
)

_WORD = r"[A-Za-z][A-Za-z'/&-]*"
_ITEM = rf"{_WORD}(?: {_WORD}){{0,2}}"
_RUN = re.compile(rf"(?<![\w'/&-]){_ITEM}(?:,\s*{_ITEM}){{2,}}(?![\w'/&-])")
_SEP = re.compile(r",\s*")
_CORRECT = re.compile(r"\bcorrect\b", re.IGNORECASE)
_INCORRECT = re.compile(r"\bincorrect\b", re.IGNORECASE)
_CONJUNCTIONS = frozenset({"and", "or"})
_FALLBACK = "simulated answer"
_MALFORMED = b'{"id": "chatcmpl-sim", "object": "chat.completion", "choices": [{"index": 0, "mess'
_TRUNCATED = json.dumps(
    {
        "id": "chatcmpl-sim",
        "object": "chat.completion",
        "created": 0,
        "model": "sim",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "simulated truncated reply", "refusal": None},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
).encode()
_SERVER_ERRORS = (500, 502, 503)
_RESPONSE_FORMATS = ("text", "json_object", "json_schema")
# The faults in the order their shares of [0, 1) are laid out; each has a ``<name>_rate`` setting.
_FAULTS = ("error", "reset", "malformed", "truncate", "empty_choices", "null_content", "hang")


@dataclass(frozen=True, slots=True)
class SimSettings:
    """How the simulator behaves.

    Rates are probabilities per request. The fault rates must not add up to more than 1:
    ``error_rate`` (500/502/503), ``reset_rate`` (connection closed, no response),
    ``malformed_rate`` (a 200 body that is not JSON), ``truncate_rate`` (a 200 body cut off
    short of its ``Content-Length``), ``empty_choices_rate`` (``choices: []``),
    ``null_content_rate`` (the message's ``content`` is null) and ``hang_rate`` (no answer
    until the client gives up). ``rpm``/``tpm`` ``None`` means unlimited; a bucket holds ``burst_seconds`` worth of
    its rate (and always at least one request's cost). ``models`` ``None`` accepts any model.
    ``response_formats`` are the ``response_format`` types answered; any other is refused with
    llama-cpp-python's HTTP 500 (``("text", "json_object")`` is that server). ``slots`` bounds the
    requests answered at once (``1`` is a one-slot llama.cpp server); ``None``: no bound.
    The ``batch_*`` settings are the fields of the backend's :class:`BatchPolicy`.
    """

    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    rpm: float | None = None
    tpm: float | None = None
    burst_seconds: float = 1.0
    error_rate: float = 0.0
    reset_rate: float = 0.0
    malformed_rate: float = 0.0
    truncate_rate: float = 0.0
    empty_choices_rate: float = 0.0
    null_content_rate: float = 0.0
    hang_rate: float = 0.0
    models: tuple[str, ...] | None = None
    seed: int = 0
    judge_correct_rate: float = 0.75
    response_formats: tuple[str, ...] = _RESPONSE_FORMATS
    slots: int | None = None
    batch_min_seconds: float = 0.0
    batch_expire_after_s: float | None = None
    batch_fail_rate: float = 0.0
    batch_stall_validating: bool = False

    def __post_init__(self) -> None:
        names = [f"{fault}_rate" for fault in _FAULTS]
        for name in (*names, "judge_correct_rate", "batch_fail_rate"):
            if not 0.0 <= (rate := getattr(self, name)) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {rate}")
        if sum(rate for _, rate in self.fault_rates) > 1.0:
            raise ValueError(f"{' + '.join(names)} must not exceed 1")
        for name, limit in (("rpm", self.rpm), ("tpm", self.tpm)):
            if limit is not None and limit <= 0:
                raise ValueError(f"{name} must be positive or None, got {limit}")
        if self.burst_seconds <= 0 or self.latency_ms < 0 or self.latency_jitter_ms < 0:
            raise ValueError("burst_seconds must be positive and latencies non-negative")
        expire = self.batch_expire_after_s
        if self.batch_min_seconds < 0 or (expire is not None and expire <= 0):
            raise ValueError("batch_min_seconds must be non-negative, batch_expire_after_s positive or None")
        if not self.response_formats or not set(self.response_formats) <= set(_RESPONSE_FORMATS):
            raise ValueError(
                f"response_formats must be some of {', '.join(_RESPONSE_FORMATS)}, got {self.response_formats}"
            )
        if self.slots is not None and self.slots < 1:
            raise ValueError(f"slots must be positive or None, got {self.slots}")

    @property
    def fault_rates(self) -> tuple[tuple[str, float], ...]:
        """``(fault, rate)`` for every fault, in the order their shares of a draw are laid out."""
        return tuple((fault, getattr(self, f"{fault}_rate")) for fault in _FAULTS)

    @property
    def batch_policy(self) -> BatchPolicy:
        """The batch behaviour these settings ask for."""
        return BatchPolicy(
            min_seconds=self.batch_min_seconds,
            expire_after_s=self.batch_expire_after_s,
            fail_rate=self.batch_fail_rate,
            stall_validating=self.batch_stall_validating,
            seed=self.seed,
        )


class _Bucket:
    """A token bucket refilling at ``per_minute / 60`` per second; starts full."""

    __slots__ = ("capacity", "level", "per_minute", "rate", "stamp")

    def __init__(self, per_minute: float, burst_seconds: float, now: float) -> None:
        self.per_minute = per_minute
        self.rate = per_minute / 60.0
        self.capacity = self.rate * burst_seconds
        self.level = self.capacity
        self.stamp = now

    def wait(self, cost: float, now: float) -> float:
        """Refill, then return the seconds until ``cost`` fits (0.0 when it fits now)."""
        capacity = max(self.capacity, cost)
        self.level = min(capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now
        return 0.0 if self.level >= cost else (cost - self.level) / self.rate


class _Slots:
    """At most ``size`` holders at once; the others wait, first come first served.

    Each waiter awaits a future of the loop it runs on, so waiting holds no thread and the
    backend may serve any loop.
    """

    __slots__ = ("free", "waiters")

    def __init__(self, size: int) -> None:
        self.free = size
        self.waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self) -> None:
        if self.free and not self.waiters:
            self.free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # the slot came as the waiter was cancelled: hand it on
            raise

    def release(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():  # a cancelled waiter left its future behind
                waiter.set_result(None)
                return
        self.free += 1


class SimBackend:
    """The simulator; ``clock`` (seconds, monotonic) and ``sleep`` (the latency wait) are
    injectable, so tests of limits and slots need not sleep.
    """

    name = "sim"

    def __init__(
        self,
        settings: SimSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.settings = settings
        self.models = settings.models
        self.batch_policy = settings.batch_policy
        self._clock = clock
        self._sleep = sleep
        self._attempts: dict[bytes, int] = {}
        self._slots = None if settings.slots is None else _Slots(settings.slots)
        now = clock()
        burst = settings.burst_seconds
        self._requests = None if settings.rpm is None else _Bucket(settings.rpm, burst, now)
        self._tokens = None if settings.tpm is None else _Bucket(settings.tpm, burst, now)
        self._faults = tuple((fault, rate) for fault, rate in settings.fault_rates if rate)

    async def complete(self, body: dict[str, Any]) -> BackendReply:
        """Answer ``body``, or raise the refusal, 429 or fault the settings call for."""
        s = self.settings
        model: str = body["model"]
        messages: list[dict[str, Any]] = body["messages"]
        response_format = body.get("response_format")
        self._check_format(response_format)
        texts = [_text(m.get("content")) for m in messages]
        prompt_tokens = math.ceil(sum(map(len, texts)) / 4) + 4 * len(messages)
        headers = self._admit(model, prompt_tokens + _max_tokens(body))
        delay_ms, fault, status = s.latency_ms, None, 0
        if self._faults or s.latency_jitter_ms:
            draws = self._draws(body)
            if s.latency_jitter_ms:
                delay_ms = max(0.0, delay_ms + draws.uniform(-s.latency_jitter_ms, s.latency_jitter_ms))
            fault = self._fault(draws)
            status = draws.choice(_SERVER_ERRORS) if fault == "error" else 0
        await self._answering(delay_ms)
        if status:
            raise BackendError(status, f"simulated {status} error", type="server_error", headers=headers)
        if fault == "reset":
            raise DropConnection()
        if fault == "malformed":
            raise MalformedReply(_MALFORMED)
        if fault == "truncate":
            raise TruncatedReply(_TRUNCATED)
        if fault == "hang":
            raise Hang()
        if fault == "null_content":
            return BackendReply(None, prompt_tokens, 0, "sim:" + model, headers)
        answer = self._answer(model, messages, texts, response_format)
        tokens = math.ceil(len(answer) / 4)
        no_choices = fault == "empty_choices"
        return BackendReply(answer, prompt_tokens, tokens, "sim:" + model, headers, no_choices=no_choices)

    def _check_format(self, response_format: Any) -> None:
        """Refuse a ``response_format`` type not among ``response_formats``, as llama-cpp-python does."""
        kind = response_format.get("type") if isinstance(response_format, dict) else None
        accepted = self.settings.response_formats
        if kind is None or kind in accepted:
            return
        quoted = [repr(name) for name in accepted]
        expected = quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"
        error = {
            "type": "literal_error",
            "loc": ("body", "response_format", "type"),
            "msg": f"Input should be {expected}",
            "input": kind,
            "ctx": {"expected": expected},
        }
        raise BackendError(500, f"1 validation error:\n  {error!r}", type="internal_server_error")

    def _draws(self, body: dict[str, Any]) -> random.Random:
        """This request's generator, seeded by ``(seed, body, attempt)``; counts the attempt."""
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        key = hashlib.blake2b(canonical, digest_size=16).digest()
        attempt = self._attempts.get(key, 0)
        self._attempts[key] = attempt + 1
        seed = hashlib.blake2b(f"{self.settings.seed}:{attempt}:".encode() + key, digest_size=16).digest()
        return random.Random(int.from_bytes(seed, "big"))

    def _fault(self, draws: random.Random) -> str | None:
        """The fault this request gets, if any (one draw, only when some fault rate is set)."""
        if not self._faults:
            return None
        draw = draws.random()
        edge = 0.0
        for fault, rate in self._faults:
            edge += rate
            if draw < edge:
                return fault
        return None

    async def _answering(self, delay_ms: float) -> None:
        """Wait the request's latency, holding a slot for it when slots are bounded."""
        if self._slots is not None:
            await self._slots.acquire()
        try:
            if delay_ms:
                await self._sleep(delay_ms / 1000.0)
        finally:
            if self._slots is not None:
                self._slots.release()

    def _admit(self, model: str, cost: int) -> Headers:
        """Charge one request and ``cost`` tokens, or raise a 429 that charges nothing."""
        now = self._clock()
        waits = []
        for kind, bucket, need in (("requests", self._requests, 1), ("tokens", self._tokens, cost)):
            if bucket is not None and (wait := bucket.wait(need, now)) > 0.0:
                waits.append((wait, kind, bucket))
        headers = self._limit_headers()
        if waits:
            wait, kind, bucket = max(waits, key=lambda w: w[0])
            raise BackendError(
                429,
                f"Rate limit reached for sim:{model} on {kind} per min (simulated): "
                f"Limit {bucket.per_minute:g}. Please try again in {wait:.3f}s.",
                type=kind,
                code="rate_limit_exceeded",
                headers=(
                    ("Retry-After", str(math.ceil(wait))),
                    ("retry-after-ms", str(math.ceil(wait * 1000.0))),
                    *headers,
                ),
            )
        if self._requests is not None:
            self._requests.level -= 1
        if self._tokens is not None:
            self._tokens.level -= cost
        return self._limit_headers()

    def _limit_headers(self) -> Headers:
        headers: list[tuple[str, str]] = []
        for kind, bucket in (("requests", self._requests), ("tokens", self._tokens)):
            if bucket is not None:
                headers.append((f"x-ratelimit-limit-{kind}", f"{bucket.per_minute:g}"))
                headers.append((f"x-ratelimit-remaining-{kind}", str(max(0, math.floor(bucket.level)))))
        return tuple(headers)

    def _answer(
        self, model: str, messages: list[dict[str, Any]], texts: list[str], response_format: Any
    ) -> str:
        key = json.dumps([self.settings.seed, model, messages], sort_keys=True, separators=(",", ":"))
        digest = hashlib.blake2b(key.encode(), digest_size=16).digest()
        pick = int.from_bytes(digest[8:], "big")
        if (structured := _schema_answer(response_format, pick)) is not None:
            return structured
        answer = self._text_answer(messages, texts, digest, pick)
        if isinstance(response_format, dict) and response_format.get("type") == "json_object":
            return json.dumps({"answer": answer})
        return answer

    def _text_answer(self, messages: list[dict[str, Any]], texts: list[str], digest: bytes, pick: int) -> str:
        text = "\n".join(texts)
        if _CORRECT.search(text) and _INCORRECT.search(text):
            draw = int.from_bytes(digest[:8], "big") / 2.0**64
            return "correct" if draw < self.settings.judge_correct_rate else "incorrect"
        order = sorted(range(len(messages)), key=lambda i: messages[i]["role"] != "system")
        options: tuple[str, ...] = ()
        for i in order:
            found = _options(texts[i])
            if len(found) > len(options):
                options = found
        return options[pick % len(options)] if options else _FALLBACK


def _text(content: Any) -> str:
    """The text of a message's content: a string, the text parts of a list of parts, or none."""
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    parts = (p.get("text") for p in content if isinstance(p, dict))
    return "\n".join(p for p in parts if isinstance(p, str))


def _max_tokens(body: dict[str, Any]) -> int:
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    return limit if isinstance(limit, int) and limit > 0 else 0


def _schema_answer(response_format: Any, pick: int) -> str | None:
    """One enum value of the response format's schema, JSON-encoded; None when it has none.

    The schema is ``json_schema.schema`` of a ``json_schema`` format, or ``schema`` of a
    ``json_object`` one (as llama-cpp-python accepts it).
    """
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
    elif kind == "json_object":
        schema = response_format.get("schema")
    else:
        return None
    if not isinstance(schema, dict):
        return None
    if isinstance(enum := schema.get("enum"), list) and enum:
        return json.dumps(enum[pick % len(enum)])
    properties = schema.get("properties")
    if not isinstance(properties, dict):
        return None
    enums = [
        (name, prop["enum"])
        for name, prop in properties.items()
        if isinstance(prop, dict) and isinstance(prop.get("enum"), list) and prop["enum"]
    ]
    if len(enums) != 1:
        return None
    name, values = enums[0]
    return json.dumps({name: values[pick % len(values)]})


@functools.lru_cache(maxsize=1024)
def _options(text: str) -> tuple[str, ...]:
    """The longest run of >= 3 comma-separated items of 1-3 words in ``text`` (first on ties).

    The first item may have swallowed words before the list ("one of Action"): it is cut to the
    longest inner item's word count. The last drops a leading "and"/"or" ("or light blue") and
    ends before a later one ("Western and nothing").
    """
    best: list[list[str]] = []
    for match in _RUN.finditer(text):
        items = [item.split() for item in _SEP.split(match.group())]
        if len(items) > len(best):
            best = items
    if not best:
        return ()
    last = best[-1]
    if len(last) > 1 and last[0].lower() in _CONJUNCTIONS:
        last = last[1:]
    ends = [i for i, word in enumerate(last) if i and word.lower() in _CONJUNCTIONS]
    best[0], best[-1] = best[0][-max(map(len, best[1:-1])) :], last[: ends[0]] if ends else last
    return tuple(" ".join(words).rstrip("'/&-") for words in best)
