"""OpenAI's Batch API file formats: request lines in, output and error lines out.

An input line is ``{"custom_id", "method": "POST", "url", "body"}``, its url
``/v1/chat/completions`` or ``/v1/responses`` (:mod:`.responses_format`). An output line is
``{"custom_id", "response": {"status_code", "body"} | null, "error": {"code", "message"} | null}``;
a line succeeded when its response has status 200 and a chat completion with message content, or
a ``response`` object with output text.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from engine import fastjson
from engine.types import ChatRequest, ChatResult, Failure, Outcome, TokenLogprob, Usage

from . import responses_format

CHAT_COMPLETIONS: Final = "/v1/chat/completions"


def encode_line(request: ChatRequest) -> str:
    line = {"custom_id": request.custom_id, "method": "POST", "url": CHAT_COMPLETIONS, "body": request.body}
    return fastjson.dumps(line).decode()


def decode_line(line: str) -> tuple[str, dict[str, Any]]:
    """A line's custom_id and the chat body it stands for (a Responses line's translated back)."""
    decoded = fastjson.loads(line)
    body = decoded["body"]
    return str(decoded["custom_id"]), responses_format.to_chat(body) if decoded.get("url") == responses_format.RESPONSES else body


def parse_output_line(line: dict[str, Any]) -> Outcome:
    """One line of a batch output or error file -> an outcome."""
    custom_id = str(line.get("custom_id"))
    response = line.get("response")
    error = line.get("error")
    if isinstance(response, dict):
        status = response.get("status_code")
        body = response.get("body") or {}
        if status == 200 and isinstance(body, dict) and body.get("object") == "response":
            return responses_format.read_result(custom_id, body)
        if status == 200:
            try:
                message = body["choices"][0]["message"]
                content = message.get("content")
                usage = body.get("usage") or {}
            except (KeyError, IndexError, TypeError, AttributeError):
                return Failure(custom_id, "malformed_body", "the batch line is not a chat completion")
            if not isinstance(content, str) or not content.strip():
                return Failure(custom_id, "empty_response", "the response has no message content")
            tokens = chat_usage(usage)
            logprobs = read_logprobs(body["choices"][0])
            return ChatResult(custom_id, content, str(body.get("model") or ""), tokens, latency_s=None, logprobs=logprobs)
        detail = body.get("error") if isinstance(body, dict) else None
        message = detail.get("message") if isinstance(detail, dict) else str(body)[:200]
        return Failure(custom_id, f"http_{status}", f"HTTP {status}: {message}", status_code=status)
    if isinstance(error, dict):
        return Failure(custom_id, str(error.get("code") or "batch_error"), str(error.get("message") or ""))
    return Failure(custom_id, "malformed_line", "the batch line has neither a response nor an error")


def chat_usage(usage: Any) -> Usage:
    """A chat completion's ``usage``: its tokens, and the prompt's cached ones
    (``prompt_tokens_details.cached_tokens``); zeros where it says nothing."""
    if not isinstance(usage, dict):
        return Usage()
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return Usage(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0), cached_tokens=int(cached or 0))


def read_logprobs(choice: Any) -> tuple[TokenLogprob, ...] | None:
    """A choice's ``logprobs.content`` (each token, its log-probability and its top
    alternatives); None when the reply has none or they are not in OpenAI's shape."""
    logprobs = choice.get("logprobs") if isinstance(choice, dict) else None
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not isinstance(content, list):
        return None
    try:
        return tuple(
            TokenLogprob(
                str(item["token"]), float(item["logprob"]),
                tuple((str(top["token"]), float(top["logprob"])) for top in item.get("top_logprobs") or ()),
            )
            for item in content
        )
    except (KeyError, TypeError, ValueError):
        return None


def read_outcomes(path: Path) -> Iterator[Outcome]:
    """The outcomes of a downloaded output or error file, line by line."""
    with path.open(encoding="utf-8") as source:
        for line in source:
            if line.strip():
                yield parse_output_line(fastjson.loads(line))
