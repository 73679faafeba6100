"""An opt-in response cache shared across runs (``--cache DIR``, or ``cache_dir`` in the task).

Each successful reply is stored under a hash of the endpoint and the request's whole body, in an
SQLite database (``DIR/responses.sqlite3``, write-ahead logged, so runs may share it at once).
A later request with the same body at the same endpoint is answered from it without a call:
re-running a task with a changed judge re-sends only the judge calls. A cached answer is
journaled with ``cached: true``, no tokens and no attempts, so it costs nothing in the metrics.
Failures are never cached. A body with a temperature above 0 asks for a new sample each time:
the cache replays the first one instead (``temperature_notes`` says so).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskStatus

from .config import EndpointConfig, TaskConfig
from .run.stage import Deliver, Stage
from .types import ChatRequest, ChatResult, Outcome, Row, TokenLogprob, Usage

CACHE_FILE = "responses.sqlite3"


class ResponseCache:
    """Replies by key (``key(endpoint, body)``) in ``directory/responses.sqlite3``."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / CACHE_FILE
        # Autocommit: each reply is stored the moment it is put. With the write-ahead log and
        # synchronous=NORMAL a commit is an append to the log, not an fsync.
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, content TEXT NOT NULL, model TEXT NOT NULL,"
            " prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL, logprobs TEXT, stored_at REAL NOT NULL)"
        )

    @staticmethod
    def key(endpoint: str, body: dict[str, Any]) -> str:
        """The hash of the endpoint and the whole request body (any change is another key)."""
        canonical = json.dumps([endpoint, body], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode()).hexdigest()

    def get(self, key: str, custom_id: str) -> ChatResult | None:
        """The stored reply as ``custom_id``'s result (cached: no tokens spent, no attempt)."""
        found = self._db.execute("SELECT content, model, logprobs FROM replies WHERE key = ?", (key,)).fetchone()
        if found is None:
            return None
        content, model, logprobs = found
        return ChatResult(custom_id, content, model, Usage(), latency_s=None, attempts=0, cached=True,
                          logprobs=_logprobs(logprobs))

    def put(self, key: str, result: ChatResult) -> None:
        logprobs = None if result.logprobs is None else json.dumps(
            [[t.token, t.logprob, [list(top) for top in t.top]] for t in result.logprobs], ensure_ascii=False
        )
        self._db.execute(
            "INSERT OR REPLACE INTO replies VALUES (?, ?, ?, ?, ?, ?, ?)",
            (key, result.content, result.model, result.usage.prompt_tokens, result.usage.completion_tokens, logprobs,
             time.time()),
        )

    def __len__(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM replies").fetchone()[0])

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ResponseCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _logprobs(text: str | None) -> tuple[TokenLogprob, ...] | None:
    if text is None:
        return None
    return tuple(TokenLogprob(token, logprob, tuple((t, v) for t, v in top)) for token, logprob, top in json.loads(text))


class CachedStage:
    """A stage (``engine.run.stage.Stage``) in front of another: a request whose reply is in the
    cache is answered from it, the others go to ``inner``, and their successful replies are
    stored before they are delivered. Hits are delivered from this stage's own task, never from
    inside ``submit``."""

    def __init__(self, inner: Stage, cache: ResponseCache, endpoint: str) -> None:
        self._inner = inner
        self._cache = cache
        self._endpoint = endpoint
        self._keys: dict[str, str] = {}  # custom_id -> key, for the requests in flight
        self._hits_in, self._hits = anyio.create_memory_object_stream[tuple[Row, ChatResult]](64)
        self.hits = 0

    async def run(self, deliver: Deliver, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async def store(row: Row, outcome: Outcome) -> None:
            key = self._keys.pop(outcome.custom_id, None)
            if key is not None and isinstance(outcome, ChatResult) and not outcome.cached:
                self._cache.put(key, outcome)
            await deliver(row, outcome)

        with self._hits_in, self._hits:  # closed however the run ends, a cancelled one too
            async with anyio.create_task_group() as group:
                await group.start(self._inner.run, store)
                task_status.started()
                async for row, result in self._hits:
                    await deliver(row, result)

    async def submit(self, row: Row, request: ChatRequest) -> None:
        key = self._cache.key(self._endpoint, request.body)
        cached = self._cache.get(key, request.custom_id)
        if cached is not None:
            self.hits += 1
            await self._hits_in.send((row, cached))
            return
        self._keys[request.custom_id] = key
        await self._inner.submit(row, request)

    async def flush(self) -> None:
        await self._inner.flush()

    async def close(self) -> None:
        self._hits_in.close()
        await self._inner.close()


def cache_endpoint(config: TaskConfig, endpoint: EndpointConfig | None = None, provider_name: str | None = None) -> str:
    """What a cached reply is keyed by besides the body: the endpoint's URL (the top-level one
    by default), and its API when not OpenAI's chat completions; for the embedded server its whole
    backend configuration (a simulator with another seed answers otherwise)."""
    endpoint = endpoint or config.endpoint
    api = "" if (endpoint.provider, endpoint.api) == ("openai", "chat") else f" ({endpoint.provider} {endpoint.api})"
    if endpoint.base_url:
        return endpoint.base_url + api
    if provider_name is not None:
        return provider_name
    return "embedded:" + config.local.model_dump_json() + api


def temperature_notes(config: TaskConfig) -> list[str]:
    """One line per caller that samples (a temperature above 0) while the cache is on."""
    callers = [("predict", config.predict), *((f"judge{'' if j.name is None else '.' + j.name}", j) for j in config.judges)]
    return [
        f"{caller}: temperature {stage.temperature:g} with the response cache on: a cached reply is replayed "
        "instead of a new sample (repeats differ by their seed, so each has its own)"
        for caller, stage in callers if stage.temperature > 0
    ]
