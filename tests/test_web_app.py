"""The web-application example, through a real HTTP client: rows arrive as server-sent events; a
client that leaves stops its run without a traceback and the run resumes; the command line answers."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
import socket
import subprocess
import sys
from asyncio.subprocess import PIPE
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import polars as pl
import pytest
from aiohttp import web

from engine import Evaluation
from engine.journal import scan_journal
from engine.rundir import RunDir
from examples.web_app import create_app

REPO = Path(__file__).resolve().parent.parent


@asynccontextmanager
async def serve(app: web.Application, *, handler_cancellation: bool = False) -> AsyncIterator[str]:
    """The app on a free loopback port; yields its base URL."""
    runner = web.AppRunner(app, handler_cancellation=handler_cancellation)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def note_handled(app: web.Application) -> asyncio.Event:
    """An event set when a request's handler has ended, however it ended."""
    handled = asyncio.Event()

    @web.middleware
    async def noting(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        try:
            return await handler(request)
        finally:
            handled.set()

    app.middlewares.append(noting)
    return handled


async def read_events(response: aiohttp.ClientResponse) -> list[tuple[str, object]]:
    """Every server-sent event of a response, its data decoded as JSON."""
    events: list[tuple[str, object]] = []
    name = ""
    async for raw in response.content:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            events.append((name, json.loads(line.removeprefix("data: "))))
    return events


async def test_rows_stream_to_the_client_as_server_sent_events(tmp_path: Path) -> None:
    async with serve(create_app(tmp_path / "runs")) as url, aiohttp.ClientSession() as session:
        async with session.get(f"{url}/") as page:
            assert "EventSource" in await page.text()
        async with session.get(f"{url}/evaluate?limit=12") as response:
            assert response.headers["Content-Type"].startswith("text/event-stream")
            events = await read_events(response)
        async with session.get(f"{url}/evaluate?limit=zero") as bad:
            assert bad.status == 400
    rows = [data for name, data in events if name == "row"]
    assert len(rows) == 12 and {row["status"] for row in rows if isinstance(row, dict)} == {"judged"}
    name, metrics = events[-1]
    assert name == "metrics" and isinstance(metrics, dict) and metrics["n_judged"] == 12
    assert len(list((tmp_path / "runs").iterdir())) == 1


async def test_a_run_that_cannot_start_is_a_failed_event_naming_why(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "runs").write_text("a file where the run directories should go")
    async with serve(create_app(tmp_path / "runs")) as url, aiohttp.ClientSession() as session:
        async with session.get(f"{url}/evaluate?limit=3") as response:
            events = await read_events(response)
    [(name, reason)] = events
    assert name == "failed" and isinstance(reason, str)
    assert reason.startswith(f"cannot create the run directory {tmp_path / 'runs'}/imdb-")
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]


@pytest.mark.parametrize("handler_cancellation", [False, True], ids=["write-fails", "handler-cancelled"])
async def test_a_client_that_leaves_stops_the_run_and_it_resumes_with_every_row_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, handler_cancellation: bool
) -> None:
    # aiohttp either cancels the handler when the client goes (handler_cancellation, as the
    # example's own server does) or lets the handler find out at its next write: both must stop
    # the run without a traceback and leave it resumable.
    caplog.set_level(logging.DEBUG)
    app = create_app(tmp_path / "runs")
    handled = note_handled(app)
    limit = 200
    async with serve(app, handler_cancellation=handler_cancellation) as url, aiohttp.ClientSession() as session:
        async with session.get(f"{url}/evaluate?limit={limit}&backend=sim") as response:
            async for raw in response.content:
                if raw.startswith(b"event: row"):
                    break
            response.close()  # the browser tab is closed after the first row
        await handled.wait()
    [run_dir] = list((tmp_path / "runs").iterdir())
    assert not [record for record in caplog.records if record.exc_info or record.levelno >= logging.ERROR]
    [stopped] = [record.getMessage() for record in caplog.records if "--resume" in record.getMessage()]
    assert re.fullmatch(rf"the client left: run {run_dir} stopped with \d+ of {limit} rows done; "
                        rf"finish it with: python -m engine run --resume {run_dir}", stopped), stopped
    assert not (run_dir / "results.parquet").exists()  # stopped, not run on for nobody

    async with Evaluation(run_dir=run_dir, resume=True) as evaluation:
        async for _ in evaluation:
            pass
    results = pl.read_parquet(run_dir / "results.parquet")
    assert results["row_id"].to_list() == [str(index) for index in range(limit)]
    assert set(results["status"]) == {"judged"}
    assert evaluation.metrics is not None and evaluation.metrics["n_judged"] == limit
    for stage in ("predict", "judge"):  # no row was answered (paid for) twice across the two runs
        custom_ids = scan_journal(RunDir(run_dir).journal(stage)).select("custom_id").collect().to_series()
        assert custom_ids.len() == custom_ids.n_unique() == limit, stage


async def test_the_script_serves_and_a_client_that_leaves_is_one_log_line(tmp_path: Path) -> None:
    # The reproduction: the script as a user starts it, a browser that leaves after the
    # first row. Its server cancels the handler at once; the script says so in one line.
    command = [sys.executable, "examples/web_app.py", "--port", "0", "--runs", str(tmp_path / "runs")]
    process = await asyncio.create_subprocess_exec(*command, cwd=REPO, stdout=PIPE, stderr=PIPE)
    assert process.stdout is not None and process.stderr is not None
    logged: list[bytes] = []
    try:
        banner = await process.stdout.readline()  # ======== Running on http://127.0.0.1:PORT ========
        url = re.search(rb"http://[\d.:]+", banner)
        assert url is not None, banner
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{url.group().decode()}/evaluate?limit=200&backend=sim") as response:
                async for raw in response.content:
                    if raw.startswith(b"event: row"):
                        break
                response.close()
        while not logged or not logged[-1].startswith(b"the client left: "):
            logged.append(await process.stderr.readline())
            assert logged[-1], b"".join(logged)  # the script ended without saying it
        process.send_signal(signal.SIGINT)
        logged.append(await process.stderr.read())
        assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    [run_dir] = list((tmp_path / "runs").iterdir())
    assert f"finish it with: python -m engine run --resume {run_dir}\n".encode() in logged[-2]
    assert b"Traceback" not in b"".join(logged) and not (run_dir / "results.parquet").exists()


@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    ("arguments", "code", "says"),
    [
        (["--help"], 0, "usage: web_app.py [-h] [--host HOST] [--port PORT] [--runs DIR]\n"),
        (["--port", "http"], 2, "web_app.py: error: argument --port: 'http' is not a port number (0 to 65535)\n"),
        (["--port", "{busy}"], 1, "web_app.py: cannot listen on 127.0.0.1:{busy}: Address already in use"),
    ],
    ids=["help", "not-a-port", "port-in-use"],
)
def test_the_command_line_answers_in_one_line_without_a_traceback(arguments: list[str], code: int, says: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        busy = str(taken.getsockname()[1])
        arguments = [argument.format(busy=busy) for argument in arguments]
        done = subprocess.run([sys.executable, "examples/web_app.py", *arguments], cwd=REPO, capture_output=True,
                              text=True, timeout=600)
    assert done.returncode == code, done.stderr
    output = done.stdout + done.stderr
    assert says.format(busy=busy) in output and "Traceback" not in output
    if code == 0:
        assert all(option in done.stdout for option in ("--host", "--port", "--runs")) and done.stderr == ""
    else:
        assert done.stdout == "" and len(done.stderr.splitlines()) <= 2  # usage, then the one line
