"""The simulator backend, for tests and benchmarks: answers drawn from the prompt, limits, faults.

Everything it answers says it is simulated: ``model`` is ``"sim:" + requested model``. Answers are
a stable hash (blake2b) of ``(seed, model, messages)``, with the body's ``seed`` (OpenAI's
parameter) appended when it has an integer one, so the same request gets the same answer in every
process and the seeds 0, 1, 2 of one prompt get independent draws. It reads ground truth only
where a verdict judge's prompt states it (see "Known truth" below).
In order of precedence it answers:

1. a judge's ``response_format`` (see below for where its schema is): an object whose properties
   are ``reasoning`` (a string), then one answer property: an ``enum`` (a verdict, or a winner)
   or an ``integer`` with ``minimum`` and ``maximum`` (a score). Also a lone integer property,
   and a lone enum one when the prompt holds a pair of answers. It answers that object
   (``{"reasoning": "(simulated reasoning) ...", "verdict": "correct"}``), the value chosen as
   for a final line (4.);
2. a ``response_format`` whose schema has an ``enum`` (on the schema, or on its one enum-carrying
   property): one enum value, JSON-encoded. The schema is ``json_schema.schema`` for a
   ``json_schema`` format, ``schema`` for a ``json_object`` one (llama-cpp-python's extension);
3. a final-line judge: the last user message has a line ending with
   ``End your reply with a final line of the form `VERDICT: <verdict>`, where <verdict> is one of:
   correct, incorrect.`` (any upper-case marker and slot; or ``is an integer from 1 to 5.``).
   It answers ``VERDICT: <choice>``; when the message also says ``First reason step by step.``,
   after a few sentences of "(simulated reasoning)" that hold, on a line of its own, a decoy:
   the marker with another choice (a reader that takes the first marker line is fooled);
4. a judge prompt (the words "correct" and "incorrect" both appear): ``"correct"`` with probability
   ``judge_correct_rate``, else ``"incorrect"``;
5. the options listed in the prompt (the longest comma-separated run of at least 3 short items):
   one of them;
6. otherwise ``"simulated answer"``.

A final line's or judge object's choice: of listed words, the first with probability
``judge_correct_rate``, else the second (the draw of 4.). An integer from ``low`` to ``high``:
``low + floor((high - low + 1) * u ** ((1 - r) / r))``, ``r`` the ``judge_correct_rate``, so scores
lean high when ``r`` is high (their scaled mean is about ``r``). A pairwise judge, whose message
holds two answers between ``[The Start of Answer A]`` / ``[The End of Answer A]`` and the same for
``B``, choosing among three listed words (``A, B, tie``): the first (``A``) with probability
``judge_first_position_rate``, whatever the answers (the draw is the request's, so the two orders
of one pair draw apart); else by content, whatever the order: equal answers (stripped) tie, else
the answer with the larger blake2b of ``(seed, answer)`` wins, named by its position.

Known truth: with ``judge_sensitivity`` and ``judge_specificity`` set, a verdict judge (the bare
words of 4.; a final line's or judge object's listed words, pairwise ones aside; the one enum value
of 2.) whose last user message has a line ``Reference: <accepted answers, comma-separated>`` and a
line ``Prediction: <answer>`` (those prefixes at the start of a line; the first of each counts)
knows whether the prediction is right: its text, stripped and case-folded, equals one of the
accepted answers, stripped and case-folded. By the request's draw (the one of 4.) it answers the
first word (``correct``) with probability ``judge_sensitivity`` for a right prediction and
``1 - judge_specificity`` for a wrong one, else the second (``incorrect``). Scores and pairwise
verdicts ignore the truth; without those lines or settings every answer is as above.

With ``logprobs: true`` the reply carries the content's tokens (words, spaces and punctuation
marks; they spell the content), each with ``top_logprobs`` (at most the request's
``top_logprobs``). The token that carries the answer (the choice, an enum value, an option) has a
probability from 0.55 to 0.99 drawn from the hash, and the other choices share the rest (a score's
by nearness, halving with each step), so it is the most likely; any other token's is 0.9999.

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
    TokenLogprob,
    TruncatedReply,
)

_WORD = r"[A-Za-z][A-Za-z'/&-]*"
_ITEM = rf"{_WORD}(?: {_WORD}){{0,2}}"
_RUN = re.compile(rf"(?<![\w'/&-]){_ITEM}(?:,\s*{_ITEM}){{2,}}(?![\w'/&-])")
_SEP = re.compile(r",\s*")
_CORRECT = re.compile(r"\bcorrect\b", re.IGNORECASE)
_INCORRECT = re.compile(r"\bincorrect\b", re.IGNORECASE)
_CONJUNCTIONS = frozenset({"and", "or"})
_FINAL_LINE = re.compile(
    r"`([A-Z]+): <\w+>`, where <\w+> is (?:one of: (.+?)|an integer from (-?\d+) to (-?\d+))\.$", re.MULTILINE
)
_REASON = "First reason step by step."
_REFERENCE = re.compile(r"^Reference: (.*)$", re.MULTILINE)
_PREDICTION = re.compile(r"^Prediction: (.*)$", re.MULTILINE)
_POSITIONS = tuple(re.compile(rf"\[The Start of Answer {x}\](.*?)\[The End of Answer {x}\]", re.DOTALL) for x in "AB")
_TOKEN = re.compile(r"\w+|\s+|[^\w\s]", re.DOTALL)
_SURE = math.log(0.9999)  # a token that carries no choice
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
    ``judge_correct_rate`` tilts judges' answers to their first choice and high scores;
    ``judge_first_position_rate`` is how often a pairwise judge answers ``A`` whatever the answers.
    ``judge_sensitivity`` and ``judge_specificity`` (both or neither) are a verdict judge's error
    rates where its prompt states the truth (the module docstring's "Known truth").
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
    judge_first_position_rate: float = 0.0
    judge_sensitivity: float | None = None
    judge_specificity: float | None = None
    response_formats: tuple[str, ...] = _RESPONSE_FORMATS
    slots: int | None = None
    batch_min_seconds: float = 0.0
    batch_expire_after_s: float | None = None
    batch_fail_rate: float = 0.0
    batch_stall_validating: bool = False

    def __post_init__(self) -> None:
        names = [f"{fault}_rate" for fault in _FAULTS]
        judge = ("judge_correct_rate", "judge_first_position_rate", "judge_sensitivity", "judge_specificity")
        for name in (*names, *judge, "batch_fail_rate"):
            if (rate := getattr(self, name)) is not None and not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {rate}")
        if (self.judge_sensitivity is None) != (self.judge_specificity is None):
            raise ValueError("set both judge_sensitivity and judge_specificity, or neither")
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
        answer = self._answer(model, messages, texts, response_format, body.get("seed"))
        content = answer.text
        logprobs = _logprobs(answer, _top(body)) if body.get("logprobs") is True else None
        tokens = math.ceil(len(content) / 4)
        no_choices = fault == "empty_choices"
        return BackendReply(
            content, prompt_tokens, tokens, "sim:" + model, headers, no_choices=no_choices, logprobs=logprobs
        )

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
        self, model: str, messages: list[dict[str, Any]], texts: list[str], response_format: Any, seed: Any
    ) -> _Answer:
        """The answer to a request (the module docstring's list); ``seed`` is the body's."""
        parts: list[Any] = [self.settings.seed, model, messages]
        if isinstance(seed, int) and not isinstance(seed, bool):
            parts.append(seed)
        key = json.dumps(parts, sort_keys=True, separators=(",", ":"))
        digest = hashlib.blake2b(key.encode(), digest_size=16).digest()
        draw = int.from_bytes(digest[:8], "big") / 2.0**64
        pick = int.from_bytes(digest[8:], "big")
        draws = random.Random(int.from_bytes(digest, "big"))
        confidence = 0.55 + 0.44 * draws.random()
        users = [text for m, text in zip(messages, texts, strict=True) if m["role"] == "user"]
        last = users[-1] if users else ""
        known = self._known_rate(last)
        rate = self.settings.judge_correct_rate if known is None else known
        schema = _schema(response_format)
        if schema is not None and (found := _schema_ask(schema, _pair(last) is not None)) is not None:
            ask, reasoning = found
            choice, decoy, others = self._choose(ask, last, draw, draws, rate)
            return _judge_object(ask, choice, decoy if reasoning else None, others, reasoning, confidence)
        enum_pick = pick if known is None else int(draw >= known)
        if schema is not None and (structured := _schema_answer(schema, enum_pick, confidence)) is not None:
            return structured
        if (line := _final_line_ask(last)) is not None:
            choice, decoy, others = self._choose(line, last, draw, draws, rate)
            answer = _final_line(line, choice, decoy if _REASON in last else None, others, confidence)
        else:
            answer = self._text_answer(messages, texts, draw, pick, confidence, rate)
        if isinstance(response_format, dict) and response_format.get("type") == "json_object":
            return answer.wrapped()
        return answer

    def _known_rate(self, message: str) -> float | None:
        """How often a verdict judge answers its first word when ``message`` states the truth and
        the truth's error rates are set; None otherwise."""
        sensitivity, specificity = self.settings.judge_sensitivity, self.settings.judge_specificity
        if sensitivity is None or specificity is None or (right := _truth(message)) is None:
            return None
        return sensitivity if right else 1.0 - specificity

    def _text_answer(
        self, messages: list[dict[str, Any]], texts: list[str], draw: float, pick: int, confidence: float, rate: float
    ) -> _Answer:
        """A bare-word verdict (``correct`` with probability ``rate``), an option, or the fallback."""
        text = "\n".join(texts)
        if _CORRECT.search(text) and _INCORRECT.search(text):
            verdict, other = ("correct", "incorrect") if draw < rate else ("incorrect", "correct")
            return _Answer("", verdict, "", ((other, 1.0),), confidence)
        order = sorted(range(len(messages)), key=lambda i: messages[i]["role"] != "system")
        options: tuple[str, ...] = ()
        for i in order:
            found = _options(texts[i])
            if len(found) > len(options):
                options = found
        if not options:
            return _Answer(_FALLBACK)
        index = pick % len(options)
        others = tuple((option, 1.0) for i, option in enumerate(options) if i != index)
        return _Answer("", options[index], "", others, confidence)

    def _choose(
        self, ask: _Ask, message: str, draw: float, draws: random.Random, rate: float
    ) -> tuple[Any, Any, _Weights]:
        """A judge's choice, a decoy (another choice; ``None`` when there is none) and the other
        choices with their weights; ``draw`` is the request's uniform draw, ``draws`` its generator,
        ``rate`` how often a verdict is the first choice."""
        s = self.settings
        if not ask.choices:
            low, high = ask.low, ask.high
            score = _score(low, high, s.judge_correct_rate, draw)
            decoy = None if low == high else low + draws.randrange(high - low)
            if decoy is not None and decoy >= score:
                decoy += 1
            return score, decoy, _neighbours(score, low, high)
        pair = _pair(message) if len(ask.choices) == 3 else None
        if pair is not None:
            index = 0 if draw < s.judge_first_position_rate else _preferred(pair, s.seed)
        else:
            index = 0 if draw < rate or len(ask.choices) == 1 else 1
        others = tuple((choice, 1.0) for i, choice in enumerate(ask.choices) if i != index)
        decoy = others[draws.randrange(len(others))][0] if others else None
        return ask.choices[index], decoy, others


def _text(content: Any) -> str:
    """The text of a message's content: a string, the text parts of a list of parts, or none."""
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    parts = (p.get("text") for p in content if isinstance(p, dict))
    return "\n".join(p for p in parts if isinstance(p, str))


def _truth(message: str) -> bool | None:
    """Whether the ``Prediction:`` line's answer is among the ``Reference:`` line's accepted ones
    (stripped, case-folded); None unless ``message`` has both lines."""
    reference, prediction = _REFERENCE.search(message), _PREDICTION.search(message)
    if reference is None or prediction is None:
        return None
    accepted = {answer.strip().casefold() for answer in reference.group(1).split(",")} - {""}
    return prediction.group(1).strip().casefold() in accepted


def _max_tokens(body: dict[str, Any]) -> int:
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    return limit if isinstance(limit, int) and limit > 0 else 0


def _top(body: dict[str, Any]) -> int:
    top = body.get("top_logprobs")
    return top if isinstance(top, int) and not isinstance(top, bool) and top > 0 else 0


def _schema(response_format: Any) -> dict[str, Any] | None:
    """The response format's JSON schema: ``json_schema.schema`` of a ``json_schema`` format, or
    ``schema`` of a ``json_object`` one (as llama-cpp-python accepts it); None without one."""
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
    elif kind == "json_object":
        schema = response_format.get("schema")
    else:
        return None
    return schema if isinstance(schema, dict) else None


def _schema_answer(schema: dict[str, Any], pick: int, confidence: float) -> _Answer | None:
    """One enum value of ``schema``, JSON-encoded (alone, or as its one enum property); None when it has none."""
    if isinstance(enum := schema.get("enum"), list) and enum:
        return _json_value("", enum, pick % len(enum), "", confidence)
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
    return _json_value(_json_head({name: None}), values, pick % len(values), "}", confidence)


@dataclass(frozen=True, slots=True)
class _Ask:
    """What a judge asks for, under ``marker`` (a final line's, or a judge object's key): one of
    ``choices``, else an integer from ``low`` to ``high``."""

    marker: str
    choices: tuple[Any, ...] = ()
    low: int = 0
    high: int = 0


# (token, weight): the other choices at the answer's position, weighted relative to each other.
_Weights = tuple[tuple[Any, float], ...]


@dataclass(frozen=True, slots=True)
class _Answer:
    """A reply, ``before + choice + after``: ``choice`` is the token that carries the answer
    (empty: none), with probability ``confidence``; ``others`` share the rest."""

    before: str
    choice: str = ""
    after: str = ""
    others: tuple[tuple[str, float], ...] = ()
    confidence: float = 1.0

    @property
    def text(self) -> str:
        return self.before + self.choice + self.after

    def wrapped(self) -> _Answer:
        """This answer as ``{"answer": text}``, its tokens JSON-escaped."""
        others = tuple((_escaped(token), weight) for token, weight in self.others)
        before, choice, after = map(_escaped, (self.before, self.choice, self.after))
        return _Answer('{"answer": "' + before, choice, after + '"}', others, self.confidence)


def _escaped(text: str) -> str:
    """``text`` as it is inside a JSON string (escaping is per character, so pieces join)."""
    return json.dumps(text)[1:-1]


def _token(value: Any) -> str:
    """The token of a JSON value: a string's text inside its quotes, else its encoding."""
    return _escaped(value) if isinstance(value, str) else json.dumps(value)


def _json_head(obj: dict[str, Any]) -> str:
    """``obj`` (its last value None) JSON-encoded up to that value."""
    return json.dumps(obj)[: -len("null}")]


def _json_value(before: str, values: list[Any], index: int, after: str, confidence: float) -> _Answer:
    """``before`` + ``values[index]`` JSON-encoded + ``after``; the other values are equally likely alternatives."""
    others = tuple((other, 1.0) for i, other in enumerate(values) if i != index)
    return _json_choice(before, values[index], others, after, confidence)


def _json_choice(before: str, value: Any, others: _Weights, after: str, confidence: float) -> _Answer:
    """``before`` + ``value`` JSON-encoded + ``after``, ``others`` the alternatives to ``value``."""
    quote = '"' if isinstance(value, str) else ""
    alternatives = tuple((_token(other), weight) for other, weight in others)
    return _Answer(before + quote, _token(value), quote + after, alternatives, confidence)


def _schema_ask(schema: dict[str, Any], pairwise: bool) -> tuple[_Ask, bool] | None:
    """The judge answer a schema asks for, and whether it asks for ``reasoning`` first; None when
    it is no judge's (an object of ``reasoning`` and an enum or bounded integer, or a lone integer,
    or a lone enum when the prompt is ``pairwise``)."""
    properties = schema.get("properties")
    if schema.get("type") != "object" or not isinstance(properties, dict) or not 1 <= len(properties) <= 2:
        return None
    *first, (key, spec) = properties.items()
    reasoning = bool(first)
    if not isinstance(spec, dict) or (reasoning and (first[0][0] != "reasoning" or not _is_string(first[0][1]))):
        return None
    low, high = spec.get("minimum"), spec.get("maximum")
    if spec.get("type") == "integer" and isinstance(low, int) and isinstance(high, int) and low <= high:
        return _Ask(key, low=low, high=high), reasoning
    enum = spec.get("enum")
    if isinstance(enum, list) and enum and (reasoning or pairwise):
        return _Ask(key, tuple(enum)), reasoning
    return None


def _is_string(spec: Any) -> bool:
    return isinstance(spec, dict) and spec.get("type") == "string"


def _judge_object(
    ask: _Ask, choice: Any, decoy: Any, others: _Weights, reasoning: bool, confidence: float
) -> _Answer:
    """The JSON object a structured judge answers (``ask.marker`` is its answer's key): its
    ``reasoning`` (with ``decoy`` under the key in capitals), then its choice."""
    head: dict[str, Any] = {"reasoning": _reasoning(ask.marker.upper(), decoy)} if reasoning else {}
    return _json_choice(_json_head({**head, ask.marker: None}), choice, others, "}", confidence)


def _final_line_ask(message: str) -> _Ask | None:
    """What the message's final-line instruction asks for; None without one."""
    match = _FINAL_LINE.search(message)
    if match is None:
        return None
    marker, listed, low, high = match.groups()
    if listed is not None:
        return _Ask(marker, tuple(_SEP.split(listed)))
    if int(low) > int(high):
        return None
    return _Ask(marker, low=int(low), high=int(high))


def _final_line(ask: _Ask, choice: Any, decoy: Any, others: _Weights, confidence: float) -> _Answer:
    """``MARKER: choice``, after simulated reasoning that holds ``decoy`` (None: no reasoning)."""
    before = f"{ask.marker}: " if decoy is None else f"{_reasoning(ask.marker, decoy)}\n{ask.marker}: "
    return _Answer(before, str(choice), "", tuple((str(other), weight) for other, weight in others), confidence)


def _reasoning(marker: str, decoy: Any) -> str:
    """Simulated reasoning with a decoy line: ``marker`` and another choice."""
    lines = ["(simulated reasoning) I compare the answer with what the question asks for."]
    if decoy is not None:
        lines += ["A first reading suggests:", f"{marker}: {decoy}", "A closer look does not bear that out."]
    return "\n".join(lines)


def _score(low: int, high: int, rate: float, draw: float) -> int:
    """An integer from ``low`` to ``high`` for the uniform ``draw``, leaning high as ``rate`` does."""
    if rate == 0.0:
        return low
    scaled: float = draw ** ((1.0 - rate) / rate)
    return min(high, low + math.floor((high - low + 1) * scaled))


def _neighbours(score: int, low: int, high: int) -> _Weights:
    """The scale's other values nearest ``score`` (at most 40), weighted by halves with distance."""
    found: list[tuple[Any, float]] = []
    distance = 1
    while len(found) < 40 and (score - distance >= low or score + distance <= high):
        found += [(value, 0.5**distance) for value in (score - distance, score + distance) if low <= value <= high]
        distance += 1
    return tuple(found)


def _pair(message: str) -> tuple[str, str] | None:
    """The answers A and B a pairwise prompt holds, stripped; None when it holds no pair."""
    found = [pattern.search(message) for pattern in _POSITIONS]
    if found[0] is None or found[1] is None:
        return None
    return found[0].group(1).strip(), found[1].group(1).strip()


def _preferred(pair: tuple[str, str], seed: int) -> int:
    """The position a content judge prefers, whatever the order: 2 (tie) for equal answers, else
    that of the answer with the larger blake2b of ``(seed, answer)``."""
    first, second = pair
    if first == second:
        return 2
    strength = [hashlib.blake2b(f"{seed}:{answer}".encode(), digest_size=8).digest() for answer in pair]
    return 0 if strength[0] > strength[1] else 1


def _logprobs(answer: _Answer, top: int) -> tuple[TokenLogprob, ...]:
    """The answer's tokens with their log-probabilities, and the ``top`` most likely at each position."""
    tokens = [TokenLogprob(token, _SURE, ((token, _SURE),)[:top]) for token in _tokens(answer.before)]
    if answer.choice:
        rest = 1.0 - answer.confidence
        total = sum(weight for _, weight in answer.others)
        ranked = sorted(((token, rest * weight / total) for token, weight in answer.others), key=lambda t: -t[1])
        alternatives = [(answer.choice, answer.confidence), *ranked][:top]
        logprob = math.log(answer.confidence)
        tokens.append(TokenLogprob(answer.choice, logprob, tuple((t, math.log(p)) for t, p in alternatives)))
    tokens += [TokenLogprob(token, _SURE, ((token, _SURE),)[:top]) for token in _tokens(answer.after)]
    return tuple(tokens)


def _tokens(text: str) -> list[str]:
    """``text`` as words, runs of spaces and single other characters; they join to ``text``."""
    return _TOKEN.findall(text)


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
