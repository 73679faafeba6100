"""Batch output and error lines -> outcomes, and which failures are worth a retry."""

from __future__ import annotations

from adapters.openai.batch_format import parse_output_line
from engine.run.retry import is_transient
from engine.types import ChatResult, Failure, Usage


def success(content: object) -> dict[str, object]:
    body = {"model": "m", "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 1}}
    return {"id": "batch_req_1", "custom_id": "predict:3", "response": {"status_code": 200, "body": body}, "error": None}


def test_a_success_line_is_a_result_without_latency() -> None:
    outcome = parse_output_line(success("Drama"))
    assert outcome == ChatResult("predict:3", "Drama", "m", Usage(7, 1), latency_s=None)


def test_empty_content_is_a_retryable_failure() -> None:
    outcome = parse_output_line(success(None))
    assert isinstance(outcome, Failure) and outcome.reason == "empty_response"
    assert is_transient(outcome.reason, outcome.status_code)


def test_http_error_lines_keep_their_status() -> None:
    line = {"custom_id": "judge:1", "response": {"status_code": 500, "body": {"error": {"message": "boom"}}}}
    outcome = parse_output_line(line)
    assert isinstance(outcome, Failure)
    assert (outcome.reason, outcome.status_code, outcome.message) == ("http_500", 500, "HTTP 500: boom")
    assert is_transient(outcome.reason, outcome.status_code)
    bad = parse_output_line({"custom_id": "judge:1", "response": {"status_code": 400, "body": {"error": {"message": "no"}}}})
    assert isinstance(bad, Failure) and not is_transient(bad.reason, bad.status_code)


def test_error_object_lines() -> None:
    expired = parse_output_line({"custom_id": "predict:9", "response": None,
                                 "error": {"code": "batch_expired", "message": "expired"}})
    assert isinstance(expired, Failure) and expired.reason == "batch_expired"
    assert is_transient(expired.reason, expired.status_code)
    invalid = parse_output_line({"custom_id": "predict:9", "response": None,
                                 "error": {"code": "invalid_request", "message": "bad"}})
    assert isinstance(invalid, Failure) and not is_transient(invalid.reason, invalid.status_code)


def test_a_line_with_neither_is_malformed() -> None:
    outcome = parse_output_line({"custom_id": "predict:1"})
    assert isinstance(outcome, Failure) and outcome.reason == "malformed_line"


def test_a_failure_is_transient_or_final_the_same_everywhere() -> None:
    """Batch retries and --resume ask one function; a reason alone (as in results.parquet) carries its status."""
    for reason in ("connection", "timeout", "connection_reset", "truncated_response", "batch_expired",
                   "batch_cancelled", "endpoint_down", "http_500", "http_429", "batch_error"):
        assert is_transient(reason), reason
    for reason in ("http_400", "http_404", "rejected_request", "invalid_request", "model_not_found", "batch_failed"):
        assert not is_transient(reason), reason
    assert not is_transient("rejected_request", 500) and is_transient("http_500", 500)
