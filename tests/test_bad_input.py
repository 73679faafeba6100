"""Bad input, as a user meets it on the command line: one clear line naming the file, row or
field, a non-zero exit, and no run directory for work that could not start."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from adapters.server.backends.sim import SimSettings
from adapters.server.embedded import EmbeddedServer
from tests.support import CountingBackend

REPO = Path(__file__).resolve().parent.parent
DATA = 'Overview,Genre\n"A heist goes wrong.",Crime\n"Two friends.",Comedy\n'
TASK = """
name = "t"
labels = ["Crime", "Comedy", "Drama"]
[dataset]
path = "data.csv"
label_column = "Genre"
[predict]
model = "base"
user_template = "{Overview}"
[judge]
model = "judge"
user_template = "{Overview} {prediction}"
"""

CASES = {
    "unknown column": (TASK.replace('label_column = "Genre"', 'label_column = "genre"'), DATA,
                       r"dataset.label_column = 'genre' is not a column of .*data.csv \(columns: Overview, Genre\)"),
    "template names a missing field": (TASK.replace("{Overview} {prediction}", "{Plot} {prediction}"), DATA,
                                       r"task.toml: judge.user_template: placeholder \{Plot\} is not a column"),
    "system prompt names a missing field": (TASK.replace('model = "base"', 'model = "base"\nsystem_prompt = "{Plot}"'), DATA,
                                            r"task.toml: predict.system_prompt: placeholder \{Plot\} is not a column"),
    "wrong type": (TASK.replace('model = "base"', 'model = "base"\ntemperature = "hot"'), DATA,
                   r"task.toml: predict.temperature: Input should be a valid number"),
    "unknown key": (TASK.replace('model = "base"', 'model = "base"\nmax_token = 5'), DATA,
                    r"task.toml: predict.max_token: unknown key \(check the spelling\)"),
    "negative rate limit": (TASK + "[endpoint]\nrpm = -1\n", DATA, r"task.toml: endpoint.rpm: Input should be greater than 0"),
    "unknown labels": (TASK, DATA + '"A ghost.",Horror\n',
                       r"data.csv: line 4: label 'Horror' in column 'Genre' is not in the task's label set"),
    "ragged csv": (TASK, DATA + '"x",Crime,extra\n',
                   r"data.csv: line 4 has 3 fields, the header 2: quote fields that contain the separator"),
    "short csv row": (TASK, DATA + '"A lone overview."\n', r"data.csv: line 4 has 1 fields, the header 2: fill in the missing"),
    "repeated header": (TASK, DATA.replace("Overview,Genre", "Overview,Genre,Genre").replace("Crime\n", "Crime,x\n")
                        .replace("Comedy\n", "Comedy,y\n"), r"data.csv: line 1: column 'Genre' appears twice in the header"),
    "header only": (TASK, "Overview,Genre\n", r"data.csv: the file has a header and no rows$"),
    "non-UTF-8 file": (TASK, None, r"data.csv: line 2 is not valid UTF-8: save the file as UTF-8"),
    "unmatched brace": (TASK.replace("{Overview}\"", "{Overview\""), DATA, r"task.toml: predict.user_template: unmatched '\{'"),
}


def engine(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_clear_line(tmp_path: Path, case: str) -> None:
    task, data, expected = CASES[case]
    (tmp_path / "task.toml").write_text(task, encoding="utf-8")
    if data is None:
        (tmp_path / "data.csv").write_bytes("Overview,Genre\nCaf\xe9 society,Drama\n".encode("latin-1"))
    else:
        (tmp_path / "data.csv").write_text(data, encoding="utf-8")
    done = engine("run", "task.toml", "--out", "run", "--quiet", cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "Traceback" not in done.stderr
    assert __import__("re").search(expected, lines[-1]), lines[-1]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("mode", ["realtime", "batch"])
def test_a_model_the_endpoint_does_not_serve(tmp_path: Path, mode: str) -> None:
    backend = CountingBackend(SimSettings(models=("base", "judge")))
    (tmp_path / "task.toml").write_text(TASK, encoding="utf-8")
    (tmp_path / "data.csv").write_text(DATA, encoding="utf-8")
    with EmbeddedServer(backend) as url:
        done = engine("run", "task.toml", "--base-url", url, "--mode", mode, "--judge-model", "judge-xl",
                      "--out", "run", "--quiet", cwd=tmp_path)
    assert done.returncode == 2
    assert "does not serve the model 'judge-xl'" in done.stderr and "Traceback" not in done.stderr
    if mode == "batch":  # the preflight stopped it before anything was submitted
        assert not (tmp_path / "run").exists()


def test_a_bad_key(tmp_path: Path) -> None:
    (tmp_path / "task.toml").write_text(TASK, encoding="utf-8")
    (tmp_path / "data.csv").write_text(DATA, encoding="utf-8")
    with EmbeddedServer(CountingBackend(SimSettings()), api_key="the-right-key") as url:
        done = subprocess.run(
            [sys.executable, "-m", "engine", "run", "task.toml", "--base-url", url, "--api-key-env", "MY_KEY",
             "--out", "run", "--quiet"],
            capture_output=True, text=True, timeout=300, cwd=tmp_path,
            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "MY_KEY": "sk-wrong-0123456789"},
        )
    assert done.returncode == 2
    assert "rejected the key in $MY_KEY" in done.stderr and "sk-wrong-0123456789" not in done.stderr


def test_an_unwritable_run_directory(tmp_path: Path) -> None:
    (tmp_path / "task.toml").write_text(TASK, encoding="utf-8")
    (tmp_path / "data.csv").write_text(DATA, encoding="utf-8")
    (tmp_path / "a-file").write_text("")
    done = engine("run", "task.toml", "--out", "a-file/run", "--quiet", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "a-file/run" in done.stderr


def test_a_full_disk_stops_cleanly_and_the_journal_resumes(tmp_path: Path) -> None:
    """RLIMIT_FSIZE makes every write past 60 kB fail as a full disk would (EFBIG): the data set's
    staged copy (45 kB for 200 IMDB rows) fits, the predict journal (about 80 kB) does not."""
    import resource

    def small_disk() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, 60_000))

    with EmbeddedServer(CountingBackend(SimSettings(seed=3))) as url:
        args = ["run", "--limit", "200", "--base-url", url, "--quiet"]
        # PYTHONDONTWRITEBYTECODE: the size limit would truncate a .pyc it writes for the next run.
        env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"}
        full = subprocess.run([sys.executable, "-m", "engine", *args, "--out", "cut"], capture_output=True, text=True,
                              timeout=300, cwd=tmp_path, env=env, preexec_fn=small_disk)
        assert full.returncode == 2 and "Traceback" not in full.stderr
        assert "cannot write the journal" in full.stderr and "File too large" in full.stderr
        resumed = engine("run", "--resume", "cut", "--quiet", cwd=tmp_path)
        assert resumed.returncode == 0, resumed.stderr
        whole = engine(*args, "--out", "whole", cwd=tmp_path)
        assert whole.returncode == 0, whole.stderr
    import polars as pl

    def results(name: str) -> pl.DataFrame:
        return pl.read_parquet(tmp_path / name / "results.parquet").drop("predict_latency_s", "judge_latency_s")

    assert results("cut").equals(results("whole"))


def test_no_room_for_the_staged_data_set_says_so(tmp_path: Path) -> None:
    import resource

    def tiny_disk() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (10_000, 10_000))

    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"}
    run = subprocess.run([sys.executable, "-m", "engine", "run", "--limit", "200", "--dry-run"], capture_output=True,
                         text=True, timeout=300, cwd=tmp_path, env=env, preexec_fn=tiny_disk)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "File too large" in run.stderr and "staged copy" in run.stderr, run.stderr
