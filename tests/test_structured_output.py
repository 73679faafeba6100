"""Constrained answers against servers that refuse OpenAI's json_schema response format: the
engine falls back (json_object with the schema, then the choices in the prompt), says so, and
never retries a request the server refused for its shape."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from adapters.openai import OpenAIProvider
from adapters.server.backends.sim import SimSettings
from adapters.server.embedded import EmbeddedServer
from engine import Evaluation
from engine.errors import ProviderError
from engine.formats import StructuredOutput, choice_format, converted
from engine.journal import scan_journal
from engine.prompts import unwrap_choice
from engine.run.retry import is_transient
from engine.rundir import RunDir
from engine.types import ChatRequest
from tests.support import CountingBackend

from .conftest import imdb_config

LLAMA_LIKE = ("text", "json_object")  # what llama-cpp-python's server accepts


def constrained(custom_id: str = "predict:0") -> ChatRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": "A film."}], "max_tokens": 25,
            "response_format": choice_format(("Drama", "Comedy"))}
    return ChatRequest(custom_id, "0", "predict", body, estimated_tokens=10)


def test_a_refused_format_moves_its_caller_down_one_format_at_a_time() -> None:
    formats = StructuredOutput()
    refusal = ProviderError("HTTP 400: Invalid value for response_format", kind="no", reason="http_400", status_code=400)
    request = constrained()
    assert formats.current(request) is request
    assert formats.refused(request, refusal)
    as_object = formats.current(request)
    schema = request.body["response_format"]["json_schema"]["schema"]
    assert as_object.body["response_format"] == {"type": "json_object", "schema": schema}
    assert formats.refused(request, refusal)  # sent in the old format after the move: go again
    assert formats.refused(as_object, refusal)
    plain = formats.current(request)
    assert "response_format" not in plain.body
    assert plain.body["messages"][-1]["content"] == "A film.\n\nAnswer with exactly one of: Drama, Comedy."
    assert not formats.refused(plain, refusal)  # nothing left to fall back to
    assert formats.formats == {"predict": "prompt"} and "response_format" in formats.refusals["predict"]
    assert formats.current(constrained("judge:0")) .body["response_format"]["type"] == "json_schema"  # per caller


def test_only_a_refusal_of_the_response_format_moves_it() -> None:
    formats = StructuredOutput()
    for error in (
        ProviderError("HTTP 400: context too long", kind="no", reason="http_400", status_code=400),
        ProviderError("HTTP 500: response_format broke the server", kind="transient", reason="http_500", status_code=500),
    ):
        assert not formats.refused(constrained(), error)
    assert formats.formats == {}


def test_every_format_reads_back_as_the_choice() -> None:
    choices = ("Drama", "Comedy")
    for reply in ('{"answer": "Drama"}', '"Drama"', "Drama", " drama. ", "'Drama'", "**Drama**"):
        expected = "**Drama**" if reply == "**Drama**" else "Drama"  # no guessing inside other markup
        assert unwrap_choice(reply, choices) == expected
    assert unwrap_choice("Thriller", choices) == "Thriller"  # not a choice: kept, and counted invalid
    assert converted(converted(constrained().body, "json_object"), "json_schema") == constrained().body


async def test_a_server_validation_error_sent_as_a_500_is_not_retried() -> None:
    with EmbeddedServer(CountingBackend(SimSettings(response_formats=LLAMA_LIKE))) as url:
        async with OpenAIProvider(url, "x") as client:
            with pytest.raises(ProviderError) as caught:
                await client.complete(constrained())
    error = caught.value
    assert (error.status_code, error.kind, error.reason) == (500, "no", "rejected_request")
    assert "Input should be 'text' or 'json_object'" in str(error)
    assert not is_transient(error.reason, error.status_code)


@pytest.mark.parametrize(("accepted", "fallback"), [(LLAMA_LIKE, "json_object"), (("text",), "prompt")])
@pytest.mark.parametrize("mode", ["realtime", "batch"])
async def test_the_shipped_example_runs_against_a_server_that_refuses_json_schema(
    tmp_path: Path, api_key: str, accepted: tuple[str, ...], fallback: str, mode: str
) -> None:
    backend = CountingBackend(SimSettings(seed=3, response_formats=accepted))
    settings = {"predict.mode": mode, "judge.mode": mode, "batch.poll_initial_s": 0.02, "batch.poll_max_s": 0.05}
    with EmbeddedServer(backend, data_dir=tmp_path / "server") as url:
        async with Evaluation(imdb_config(url, limit=30, **settings), run_dir=tmp_path / "run") as evaluation:
            pass
    metrics = evaluation.metrics
    assert metrics is not None and metrics["n_judged"] == 30
    assert {caller: entry["format"] for caller, entry in metrics["structured_output"].items()} == {
        "predict": fallback, "judge": fallback
    }
    results = pl.read_parquet(tmp_path / "run" / "results.parquet")
    assert results["prediction_valid"].all() and results["verdict"].null_count() == 0
    # A request refused for its format goes again at once in the next one, never more often.
    tried = 1 if fallback == "json_object" else 2
    for stage in ("predict", "judge"):
        attempts = scan_journal(RunDir(tmp_path / "run").journal(stage)).collect()["attempts"].to_list()
        assert max(attempts) <= 1 + tried
    refused = backend.calls - 60 - (2 if mode == "batch" else 0)  # less the preflight call answered per caller
    assert 0 < refused <= 2 * tried * 64, backend.calls
    if mode == "batch":  # the preflight settled the format: every batch line was answered
        assert refused == 2 * tried
    notes = [note for note in evaluation.notes if note.startswith("predict: the endpoint refused its structured-output format")]
    assert len(notes) == (mode == "batch") and all("\n" not in note for note in notes)


@pytest.mark.local_model
@pytest.mark.timeout(900)
async def test_the_shipped_example_against_llama_cpp_server(tmp_path: Path, llama_server: str) -> None:
    """The issue's report: llama-cpp-python's own OpenAI server refused every constrained request.
    The shipped example (constrain = true) now runs against it, through json_object."""
    config = imdb_config(llama_server, limit=3, **{"endpoint.api_key_env": "NO_SUCH_KEY_VARIABLE",
                                                    "endpoint.timeout_s": 300.0})
    async with Evaluation(config, run_dir=tmp_path / "run") as evaluation:
        pass
    metrics = evaluation.metrics
    assert metrics is not None and metrics["n_failed"] == 0 and metrics["n_judged"] == 3
    assert metrics["structured_output"]["predict"]["format"] == "json_object"
    assert metrics["invalid_prediction_rate"] == 0.0  # llama.cpp's grammar kept the answers to the labels
