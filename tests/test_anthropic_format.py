"""Chat bodies to Anthropic's Messages params and back, batch lines, the custom_id mapping and
result lines: pure translation, checked against the ``anthropic`` SDK's own types."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pydantic
import pytest
from anthropic.types import Message
from anthropic.types.messages import MessageBatchIndividualResponse
from anthropic.types.messages.batch_create_params import Request

from adapters.anthropic import messages_format as fmt
from engine.errors import ProviderError
from engine.formats import choice_format, converted
from engine.types import ChatRequest, ChatResult, Failure, Usage

REQUEST = pydantic.TypeAdapter(Request)
SCHEMA = choice_format(("correct", "incorrect"))["json_schema"]["schema"]


def body(**fields: Any) -> dict[str, Any]:
    return {
        "model": "claude-judge",
        "messages": [
            {"role": "system", "content": "You grade answers."},
            {"role": "user", "content": "Is 2 + 2 = 4?"},
        ],
        "temperature": 0.0,
        "max_tokens": 64,
        **fields,
    }


def forced(value: Any) -> Any:
    """A validated TypedDict with its lazily checked iterables run through (so their items are checked too)."""
    if isinstance(value, dict):
        return {key: forced(item) for key, item in value.items()}
    if isinstance(value, Iterable) and not isinstance(value, (str, bytes, list)):
        return [forced(item) for item in value]
    if isinstance(value, list):
        return [forced(item) for item in value]
    return value


def valid_request(custom_id: str, params: dict[str, Any]) -> dict[str, Any]:
    """A Message Batch request, as the SDK's ``batch_create_params.Request`` validates it."""
    return forced(REQUEST.validate_python({"custom_id": custom_id, "params": params}))  # type: ignore[no-any-return]


def test_every_field_of_a_chat_body_has_its_place_in_messages_params() -> None:
    params = fmt.to_params(body(top_p=0.9, stop=["\n\n", "END"], seed=3, user="row-7", prompt_cache_key="judge"))
    assert params == {
        "model": "claude-judge",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "Is 2 + 2 = 4?"}],
        "system": [{"type": "text", "text": "You grade answers.", "cache_control": {"type": "ephemeral"}}],
        "temperature": 0.0,
        "top_p": 0.9,
        "stop_sequences": ["\n\n", "END"],
        "metadata": {"user_id": "row-7"},
    }
    assert "seed" not in params and "prompt_cache_key" not in params
    valid_request("x", params)


def test_system_and_developer_messages_become_system_blocks_and_only_the_last_is_a_breakpoint() -> None:
    messages = [
        {"role": "system", "content": "Rubric."},
        {"role": "developer", "content": [{"type": "text", "text": "Labels: a, b."}]},
        {"role": "user", "content": [{"type": "text", "text": "Row 1"}, {"type": "text", "text": "Answer: a"}]},
        {"role": "assistant", "content": "a"},
        {"role": "user", "content": "Sure?"},
    ]
    params = fmt.to_params({"model": "m", "messages": messages, "max_tokens": 8, "prompt_cache_key": "k"})
    assert params["system"] == [
        {"type": "text", "text": "Rubric."},
        {"type": "text", "text": "Labels: a, b.", "cache_control": {"type": "ephemeral"}},
    ]
    assert params["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Row 1"}, {"type": "text", "text": "Answer: a"}]},
        {"role": "assistant", "content": "a"},
        {"role": "user", "content": "Sure?"},
    ]
    valid_request("x", params)


def test_without_a_cache_key_or_a_system_message_there_is_no_breakpoint() -> None:
    assert "cache_control" not in fmt.to_params(body())["system"][0]
    bare = fmt.to_params({"model": "m", "messages": [{"role": "user", "content": "hi"}], "prompt_cache_key": "k"})
    assert "system" not in bare and json.dumps(bare).count("cache_control") == 0


def test_max_tokens_comes_from_either_field_and_anthropic_always_gets_one() -> None:
    assert fmt.to_params({"model": "m", "messages": [], "max_completion_tokens": 9})["max_tokens"] == 9
    assert fmt.to_params({"model": "m", "messages": []})["max_tokens"] == fmt.DEFAULT_MAX_TOKENS


def test_a_single_stop_string_is_a_one_element_list() -> None:
    assert fmt.to_params(body(stop="###"))["stop_sequences"] == ["###"]


@pytest.mark.parametrize("target", ["json_schema", "json_object"])
def test_a_structured_answer_is_asked_through_one_forced_tool(target: str) -> None:
    chat = converted(body(response_format=choice_format(("correct", "incorrect"))), target)  # type: ignore[arg-type]
    params = fmt.to_params(chat)
    assert params["tools"] == [{"name": "answer", "input_schema": SCHEMA}]
    assert params["tool_choice"] == {"type": "tool", "name": "answer"}
    assert "response_format" not in params
    valid_request("x", params)


def test_a_json_object_format_without_a_schema_asks_for_any_object_and_text_asks_for_nothing() -> None:
    assert fmt.to_params(body(response_format={"type": "json_object"}))["tools"][0]["input_schema"] == {"type": "object"}
    assert "tools" not in fmt.to_params(body(response_format={"type": "text"}))


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"logprobs": True, "top_logprobs": 5}, "no token log-probabilities"),
        ({"presence_penalty": 0.5}, "'presence_penalty'"),
        ({"response_format": {"type": "grammar"}}, "'grammar'"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "'tool' messages"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, "'image_url'"),
    ],
)
def test_what_anthropic_cannot_do_is_refused_for_good(fields: dict[str, Any], says: str) -> None:
    with pytest.raises(ProviderError) as refused:
        fmt.to_params(body(**fields))
    assert refused.value.kind == "no" and refused.value.reason == "rejected_request"
    assert says in str(refused.value)


def test_logprobs_off_and_a_stream_off_are_no_fields_at_all() -> None:
    assert fmt.to_params(body(logprobs=False, stream=False)) == fmt.to_params(body())


@pytest.mark.parametrize(
    "chat",
    [
        body(),
        body(top_p=0.5, stop=["\n"], user="u-1", prompt_cache_key="anything"),
        body(response_format=choice_format(("a", "b"))),
        {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}], "max_tokens": 3},
    ],
)
def test_params_read_back_as_a_chat_body_translate_to_the_same_params(chat: dict[str, Any]) -> None:
    params = fmt.to_params(chat)
    back = fmt.to_chat(params)
    assert fmt.to_params(back) == params
    assert back["messages"] == chat["messages"] and back["max_tokens"] == chat["max_tokens"]
    assert ("prompt_cache_key" in back) == ("prompt_cache_key" in chat)
    if "response_format" in chat:
        assert back["response_format"]["json_schema"]["schema"] == chat["response_format"]["json_schema"]["schema"]


def test_a_batch_line_carries_the_engine_custom_id_and_decodes_to_a_chat_body() -> None:
    request = ChatRequest("judge.strict@2:row 7", "row 7", "judge", body(response_format=choice_format(("a", "b"))), 50)
    line = fmt.encode_line(request)
    assert json.loads(line) == {"custom_id": "judge.strict@2:row 7", "params": fmt.to_params(request.body)}
    custom_id, chat = fmt.decode_line(line)
    assert custom_id == request.custom_id
    assert fmt.to_params(chat) == fmt.to_params(request.body)


ID_PATTERN = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


@pytest.mark.parametrize(
    "custom_id",
    ["predict:0", "judge.strict@2:row 7", "judge:" + "é" * 200, "judge:a/b?c=d&e", "judge.panel-x_1:" + "9" * 80, ":"],
)
def test_anthropic_ids_match_the_pattern_and_stay_readable(custom_id: str) -> None:
    mapped = fmt.anthropic_id(custom_id)
    assert ID_PATTERN.match(mapped), mapped
    assert mapped == fmt.anthropic_id(custom_id)
    readable = re.sub(r"[^a-zA-Z0-9_-]", "_", custom_id)[:20]
    assert mapped.startswith(readable)


def test_distinct_ids_map_to_distinct_anthropic_ids_even_when_their_readable_part_is_the_same() -> None:
    ids = [f"judge.x@{repeat}:row {row}" for row in range(2000) for repeat in (2, 3)]
    ids += ["judge:a b", "judge:a_b", "judge:a.b", "judge:" + "x" * 100 + "1", "judge:" + "x" * 100 + "2"]
    mapped = {fmt.anthropic_id(custom_id) for custom_id in ids}
    assert len(mapped) == len(ids)


def message(content: list[dict[str, Any]], **usage: int) -> dict[str, Any]:
    reply = {
        "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-judge-1",
        "content": content, "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 5, **usage},
    }
    Message.model_validate(reply)
    return reply


def test_a_message_reads_as_its_text_its_model_and_the_whole_prompt_as_prompt_tokens() -> None:
    reply = message(
        [{"type": "text", "text": "VERDICT: "}, {"type": "text", "text": "correct"}],
        cache_read_input_tokens=1024, cache_creation_input_tokens=256,
    )
    assert fmt.read_message(reply) == (
        "VERDICT: correct", "claude-judge-1",
        Usage(prompt_tokens=12 + 1024 + 256, completion_tokens=5, cached_tokens=1024, cache_write_tokens=256),
    )


def test_a_tool_answer_reads_as_compact_json_and_missing_cache_counts_are_zero() -> None:
    reply = message([{"type": "tool_use", "id": "toolu_1", "name": "answer", "input": {"answer": "été"}}])
    content, _, usage = fmt.read_message(reply)
    assert content == '{"answer":"été"}'
    assert usage == Usage(12, 5)


def result_line(custom_id: str, result: dict[str, Any]) -> dict[str, Any]:
    line = {"custom_id": custom_id, "result": result}
    MessageBatchIndividualResponse.model_validate(line)
    return line


@pytest.mark.parametrize(
    ("error_type", "status"),
    [
        ("invalid_request_error", 400), ("authentication_error", 401), ("permission_error", 403),
        ("not_found_error", 404), ("request_too_large", 413), ("rate_limit_error", 429),
        ("api_error", 500), ("overloaded_error", 529),
    ],
)
def test_an_errored_line_is_a_failure_with_the_status_of_its_error_type(error_type: str, status: int) -> None:
    error = {"type": "error", "error": {"type": error_type, "message": "it went wrong"}}
    outcome = fmt.parse_result_line({"custom_id": "judge:1", "result": {"type": "errored", "error": error}})
    assert outcome == Failure("judge:1", f"http_{status}", f"HTTP {status}: {error_type}: it went wrong", status_code=status)


def test_only_anthropics_error_object_is_read_as_one() -> None:
    anthropic_error = {"type": "error", "error": {"type": "not_found_error", "message": "model: x"}, "request_id": "req_1"}
    assert fmt.error_detail(anthropic_error) == ("not_found_error", "model: x")
    openai_error = {"error": {"type": "invalid_request_error", "message": "Invalid URL (POST /v1/messages)"}}
    assert fmt.error_detail(openai_error) == (None, "")
    assert fmt.error_detail("Bad Gateway") == (None, "")


def test_result_lines_of_every_kind(tmp_path: Path) -> None:
    lines = [
        result_line("judge:1", {"type": "succeeded", "message": message([{"type": "text", "text": "yes"}])}),
        result_line("judge:2", {"type": "canceled"}),
        result_line("judge:3", {"type": "expired"}),
        result_line("judge:4", {"type": "succeeded", "message": message([{"type": "text", "text": " "}])}),
        {"custom_id": "judge:5", "result": {"type": "succeeded", "message": {"content": "not blocks"}}},
        {"custom_id": "judge:6", "result": {"type": "pending"}},
    ]
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines) + "\n", encoding="utf-8")
    outcomes = list(fmt.read_outcomes(path))
    assert outcomes[0] == ChatResult("judge:1", "yes", "claude-judge-1", Usage(12, 5), latency_s=None)
    assert [(o.custom_id, o.reason) for o in outcomes[1:] if isinstance(o, Failure)] == [
        ("judge:2", "batch_cancelled"), ("judge:3", "batch_expired"), ("judge:4", "empty_response"),
        ("judge:5", "malformed_body"), ("judge:6", "malformed_line"),
    ]
