"""The embedded server in its own process, so the client's CPU time is the client's alone."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def sim_server_process(*args: str) -> Iterator[str]:
    """Run ``python -m engine serve --port 0 ARGS`` and yield its base URL."""
    command = [sys.executable, "-m", "engine", "serve", "--port", "0", *args]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            if " at http" not in line:
                raise RuntimeError(f"the server did not start: {line!r}")
            yield line.rsplit(" at ", 1)[1].strip()
        finally:
            process.terminate()
