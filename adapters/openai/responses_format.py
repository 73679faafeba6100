"""OpenAI's Responses API on the client: the engine's chat bodies translated, replies read back.

The engine asks in chat completions (``ChatRequest.body``). On ``/v1/responses`` (realtime, or
batch lines with ``url: "/v1/responses"``) :func:`to_responses` sends system messages as
``instructions``, the other messages as ``input``, ``max_tokens`` (or ``max_completion_tokens``)
as ``max_output_tokens`` (raised to the API's floor of 16), ``response_format`` as
``text.format``; ``temperature``, ``top_p``, ``prompt_cache_key`` and a few request tags are kept,
``seed`` is dropped (the API has none), and anything else (``logprobs``, ``stop``, ``n`` ...) is
refused by name. :func:`to_chat` translates back: a batch line is read as the chat body it
stands for. A ``response`` object gives the reply's output text, model and usage.
"""

from __future__ import annotations

from typing import Any, Final

from engine import fastjson
from engine.errors import ProviderError
from engine.types import ChatRequest, ChatResult, Failure, Outcome, Usage

RESPONSES: Final = "/v1/responses"
#: The smallest ``max_output_tokens`` the Responses API accepts.
MIN_OUTPUT_TOKENS: Final = 16
# Chat fields that mean the same on the Responses API.
_KEPT = ("temperature", "top_p", "prompt_cache_key", "metadata", "store", "user", "safety_identifier", "service_tier")
_DROPPED = ("seed",)


def to_responses(body: dict[str, Any]) -> dict[str, Any]:
    """The Responses body asking what the chat ``body`` asks; raises ``ProviderError`` (kind
    ``no``) naming a setting the Responses API cannot take."""
    translated = {"model", "messages", "max_tokens", "max_completion_tokens", "response_format", *_KEPT, *_DROPPED}
    for name, value in body.items():
        if name not in translated and value is not None and value is not False:
            raise _unsupported(f"`{name}`")
    instructions: list[str] = []
    items: list[dict[str, Any]] = []
    for i, message in enumerate(body["messages"]):
        role = message.get("role")
        if role == "system":
            instructions.append(_text(message.get("content"), f"messages[{i}].content"))
        elif role in ("user", "assistant", "developer"):
            items.append({"role": role, "content": _input_content(message.get("content"), role, f"messages[{i}].content")})
        else:
            raise _unsupported(f"a `{role}` message (messages[{i}])")
    out: dict[str, Any] = {"model": body["model"]}
    if instructions:
        out["instructions"] = "\n\n".join(instructions)
    out["input"] = items
    for name in _KEPT:
        if body.get(name) is not None:
            out[name] = body[name]
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if limit is not None:
        out["max_output_tokens"] = max(MIN_OUTPUT_TOKENS, int(limit))
    if (response_format := body.get("response_format")) is not None:
        out["text"] = {"format": _text_format(response_format)}
    return out


def _unsupported(what: str) -> ProviderError:
    message = f"the Responses API (endpoint.api = \"responses\") cannot take {what}: use endpoint.api = \"chat\""
    return ProviderError(message, kind="no", reason="unsupported_setting")


def _text(content: Any, where: str) -> str:
    """A message's content as one string: a string, or the texts of its text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "".join(str(part.get("text", "")) for part in content)
    raise _unsupported(f"`{where}` other than text")


def _input_content(content: Any, role: str, where: str) -> str | list[dict[str, Any]]:
    """A chat message's content as an input message's: a string stays one, text parts become
    ``input_text`` parts (``output_text`` for the assistant)."""
    if isinstance(content, str):
        return content
    _text(content, where)  # refuses anything but text parts
    kind = "output_text" if role == "assistant" else "input_text"
    return [{"type": kind, "text": part.get("text", "")} for part in content]


def _text_format(response_format: dict[str, Any]) -> dict[str, Any]:
    """A chat ``response_format`` as ``text.format`` (a ``json_object``'s schema, llama.cpp's
    extension, is not sent)."""
    kind = response_format.get("type")
    if kind != "json_schema":
        return {"type": kind}
    spec = response_format.get("json_schema") or {}
    fmt: dict[str, Any] = {"type": "json_schema", "name": spec.get("name") or "answer", "schema": spec.get("schema") or {}}
    for key in ("strict", "description"):
        if spec.get(key) is not None:
            fmt[key] = spec[key]
    return fmt


def to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """The chat body a Responses ``body`` (as :func:`to_responses` makes them) stands for."""
    messages: list[dict[str, Any]] = []
    if body.get("instructions") is not None:
        messages.append({"role": "system", "content": body["instructions"]})
    given = body.get("input")
    if isinstance(given, str):
        messages.append({"role": "user", "content": given})
    else:
        for item in given or ():
            content = item.get("content")
            if isinstance(content, list):
                content = [{"type": "text", "text": part.get("text", "")} for part in content]
            messages.append({"role": item.get("role"), "content": content})
    chat: dict[str, Any] = {"model": body.get("model"), "messages": messages}
    for name in _KEPT:
        if body.get(name) is not None:
            chat[name] = body[name]
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = body["max_output_tokens"]
    fmt = (body.get("text") or {}).get("format")
    if isinstance(fmt, dict):
        if fmt.get("type") == "json_schema":
            spec = {key: fmt[key] for key in ("name", "description", "schema", "strict") if fmt.get(key) is not None}
            chat["response_format"] = {"type": "json_schema", "json_schema": spec}
        else:
            chat["response_format"] = {"type": fmt.get("type")}
    return chat


def encode_line(request: ChatRequest) -> str:
    """A batch input line calling ``/v1/responses`` with the request translated."""
    line = {"custom_id": request.custom_id, "method": "POST", "url": RESPONSES, "body": to_responses(request.body)}
    return fastjson.dumps(line).decode()


def read_response(payload: Any) -> tuple[str, str, Usage]:
    """A ``response`` object's output text (its messages' ``output_text`` parts), model and
    usage; raises ``ProviderError`` (transient) when it is not one, failed, or has no text."""
    try:
        status = payload.get("status")
        texts = [
            part["text"]
            for item in payload["output"]
            if item.get("type") == "message"
            for part in item.get("content") or ()
            if part.get("type") == "output_text"
        ]
        model = str(payload.get("model") or "")
        usage = payload.get("usage") or {}
        details = usage.get("input_tokens_details") or {}
        tokens = Usage(
            int(usage.get("input_tokens") or 0),
            int(usage.get("output_tokens") or 0),
            cached_tokens=int(details.get("cached_tokens") or 0),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ProviderError("the reply is not a response object", kind="transient", reason="malformed_body") from exc
    if status == "failed":
        error = payload.get("error") or {}
        detail = error.get("message") if isinstance(error, dict) else None
        raise ProviderError(f"the response failed: {detail or 'no reason given'}", kind="transient", reason="response_failed")
    content = "".join(str(text) for text in texts)
    if not content.strip():
        raise ProviderError("the response has no output text", kind="transient", reason="empty_response")
    return content, model, tokens


def read_result(custom_id: str, payload: Any) -> Outcome:
    """A batch output line's ``response`` object (status 200) as an outcome."""
    try:
        content, model, usage = read_response(payload)
    except ProviderError as exc:
        return Failure(custom_id, exc.reason, str(exc))
    return ChatResult(custom_id, content, model, usage, latency_s=None)
