"""The embedded server in its own process, so the client's CPU time is the client's alone."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class ServerProcess:
    url: str
    pid: int

    def cpu_seconds(self) -> float:
        """The server's user+system CPU time so far (Linux ``/proc``)."""
        with open(f"/proc/{self.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def sim_server_process(*args: str) -> Iterator[ServerProcess]:
    """Run ``python -m engine serve --port 0 ARGS`` and yield its base URL and pid."""
    command = [sys.executable, "-m", "engine", "serve", "--port", "0", *args]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            if " at http" not in line:
                raise RuntimeError(f"the server did not start: {line!r}")
            yield ServerProcess(line.rsplit(" at ", 1)[1].strip(), process.pid)
        finally:
            process.terminate()
