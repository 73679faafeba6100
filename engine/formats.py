"""Structured output, in the format the endpoint accepts.

A constrained caller (``constrain = true``) asks for one of a fixed set of answers through
OpenAI's ``response_format: {type: json_schema}``. Not every OpenAI-compatible server takes it:
llama-cpp-python's answers HTTP 500 ("Input should be 'text' or 'json_object'") but accepts
``{type: json_object, schema}``; others accept neither. The first request the endpoint refuses
for its ``response_format`` moves its caller one format down and is sent again at once (the
refusal spends no retry):

    json_schema  ->  json_object with the schema  ->  plain text, the choices listed in the prompt

Every later request of that caller goes in the format that worked; ``refusals`` keeps what the
endpoint said, for the summary. A reply in any of the formats is read by
``prompts.unwrap_choice``. Batch-mode callers learn their format from the preflight call, before
any file is written.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

from .errors import ProviderError
from .types import ChatRequest, caller_of

Format = Literal["json_schema", "json_object", "prompt"]
FORMATS: tuple[Format, ...] = ("json_schema", "json_object", "prompt")
DESCRIBED: dict[Format, str] = {
    "json_schema": "a JSON-schema enum (response_format json_schema)",
    "json_object": "a JSON object with a schema (response_format json_object)",
    "prompt": "the choices listed in the prompt (no response_format)",
}


class StructuredOutput:
    """The format each constrained caller (``custom_id`` prefix) uses now; shared by its calls."""

    def __init__(self) -> None:
        self._formats: dict[str, Format] = {}
        self.refusals: dict[str, str] = {}

    @property
    def formats(self) -> dict[str, Format]:
        """The callers that moved off ``json_schema``, and the format each uses now."""
        return dict(self._formats)

    def current(self, request: ChatRequest) -> ChatRequest:
        """``request`` in its caller's format now (requests built before a caller moved on)."""
        now = self._formats.get(_caller(request))
        if now is None or "response_format" not in request.body or _format_of(request.body) == now:
            return request
        return replace(request, body=converted(request.body, now))

    def refused(self, sent: ChatRequest, error: ProviderError) -> bool:
        """After the endpoint refused ``sent``: True when it should go again at once, in its
        caller's next format (which ``current`` gives)."""
        if "response_format" not in sent.body or not refuses_response_format(error):
            return False
        caller, tried = _caller(sent), _format_of(sent.body)
        now = self._formats.get(caller, "json_schema")
        if tried != now:  # another call moved the caller on meanwhile
            return True
        self._formats[caller] = FORMATS[FORMATS.index(now) + 1]
        self.refusals[caller] = str(error)
        return True


REASON = "First reason step by step."


def final_line(marker: str, slot: str, what: str) -> str:
    """The plain-text way to ask for an answer: on a final line (``VERDICT: correct``), which
    ``engine.judges`` reads (and the simulator recognises)."""
    return f"End your reply with a final line of the form `{marker}: <{slot}>`, where <{slot}> is {what}."


def choice_format(choices: tuple[str, ...]) -> dict[str, Any]:
    """An OpenAI structured-output ``response_format`` whose only answer is one of ``choices``."""
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string", "enum": list(choices)}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    return json_schema_format(schema)


def json_schema_format(schema: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI structured-output ``response_format`` for ``schema``."""
    return {"type": "json_schema", "json_schema": {"name": "choice", "strict": True, "schema": schema}}


def refuses_response_format(error: ProviderError) -> bool:
    """An answer that refuses the request's ``response_format``: a 400 or 422 saying so, or a
    server's validation error (llama-cpp-python answers those with a 500) naming it."""
    rejected = error.status_code in (400, 422) or error.reason == "rejected_request"
    return rejected and "response_format" in str(error)


def converted(body: dict[str, Any], target: Format) -> dict[str, Any]:
    """A constrained request body (json_schema or json_object) in the ``target`` format."""
    response_format = body["response_format"]
    schema = response_format["schema"] if "schema" in response_format else response_format["json_schema"]["schema"]
    if target == "json_schema":
        return {**body, "response_format": json_schema_format(schema)}
    if target == "json_object":
        return {**body, "response_format": {"type": "json_object", "schema": schema}}
    *earlier, last = body["messages"]
    instruction = f"{last['content']}\n\n{_in_words(schema)}"
    plain = {key: value for key, value in body.items() if key != "response_format"}
    return {**plain, "messages": [*earlier, {**last, "content": instruction}]}


def _in_words(schema: dict[str, Any]) -> str:
    """A constrained answer asked for in the prompt: one of the choices (``{"answer": ...}``), or
    the answer property on a final line (a judge's ``{"reasoning", "verdict"}``)."""
    properties = schema["properties"]
    if "answer" in properties:
        return "Answer with exactly one of: " + ", ".join(str(choice) for choice in properties["answer"]["enum"]) + "."
    key = next(name for name in properties if name != "reasoning")
    spec = properties[key]
    if "enum" in spec:
        what = "one of: " + ", ".join(str(choice) for choice in spec["enum"])
    else:
        what = f"an integer from {spec['minimum']} to {spec['maximum']}"
    return final_line(key.upper(), key, what)


def _format_of(body: dict[str, Any]) -> Format:
    response_format = body.get("response_format")
    if not isinstance(response_format, dict):
        return "prompt"
    return "json_object" if response_format.get("type") == "json_object" else "json_schema"


def _caller(request: ChatRequest) -> str:
    return caller_of(request.custom_id)
