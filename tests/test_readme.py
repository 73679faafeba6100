"""The README stays true: its library example runs, its first lines are the two commands."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text(encoding="utf-8")


def test_first_lines_install_and_run_then_test() -> None:
    commands = [line.strip() for line in README.splitlines()[2:4]]
    assert commands == ["pip install '.[local]' && python -m engine run", "pip install '.[test,local]' && python -m pytest"]


def test_library_example_runs(tmp_path: Path) -> None:
    example = re.search(r"```python\n(.*?)```", README, re.DOTALL)
    assert example is not None
    done = subprocess.run(
        [sys.executable, "-c", example.group(1)], cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 6 and lines[-1].split()[-1].startswith("runs/imdb-")
    assert (tmp_path / "runs").is_dir()
