"""``engine judge`` as a user runs it: real processes, real HTTP, SIGKILL in the middle of a
batch of repeated reasoning score calls, then ``run --resume``: nothing is paid twice."""

from __future__ import annotations

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
ROWS = 40

SCORE_JUDGE = """
[judge]
model = "grader"
kind = "score"
scale = [1, 5]
pass_at = 4
reasoning = true
max_tokens = 300
repeats = 2
temperature = 0.5
user_template = \"\"\"Overview: {Overview}
Answer: {prediction}
How well does the answer name the genre?\"\"\"
"""


def engine(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True, timeout=300, cwd=REPO)


def judged(run_dir: Path) -> pl.DataFrame:
    return pl.read_parquet(run_dir / "results.parquet").select("row_id", "prediction", "score", "repeat_scores", "reasoning")


@pytest.mark.parametrize("mode", ["realtime", "batch"])
def test_a_judging_run_killed_mid_way_resumes_without_paying_twice(tmp_path: Path, mode: str) -> None:
    judge_file = tmp_path / "judge.toml"
    judge_file.write_text(SCORE_JUDGE)
    backend = CountingBackend(SimSettings(latency_ms=5, seed=4))
    with EmbeddedServer(backend) as url:
        source = engine("run", "--limit", str(ROWS), "--base-url", url, "--out", str(tmp_path / "source"),
                        "--set", "local.backend=sim", "--quiet")
        assert source.returncode == 0, source.stderr
        judge = ["judge", str(tmp_path / "source"), "--config", str(judge_file), "--mode", mode, "--base-url", url,
                 "--set", "batch.poll_initial_s=0.05", "--set", "batch.max_requests_per_file=30", "--concurrency", "8",
                 "--quiet"]
        whole = engine(*judge, "--out", str(tmp_path / "whole"))
        assert whole.returncode == 0, whole.stderr
        before = backend.calls
        backend.arm(before + 25)  # of the 2 x 40 judge calls
        with subprocess.Popen([sys.executable, "-m", "engine", *judge, "--out", str(tmp_path / "cut")], cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as process:
            assert backend.reached.wait(timeout=300), "the judging run never got going"
            os.kill(process.pid, signal.SIGKILL)
        assert not (tmp_path / "cut" / "metrics.json").exists()
        resumed = engine("run", "--resume", str(tmp_path / "cut"), "--quiet")
        assert resumed.returncode == 0, resumed.stderr
        calls = backend.calls - before
    assert judged(tmp_path / "cut").equals(judged(tmp_path / "whole"))
    # 80 judge calls and no predict call. A kill costs at most the calls in flight in realtime mode
    # (the concurrency, 8); in batch mode the batches' lines ran once, at the server, and the
    # resumed run re-attached to them: only each session's one-word preflight call is extra.
    extra = calls - 2 * ROWS
    assert 0 <= extra <= (2 if mode == "batch" else 8)
