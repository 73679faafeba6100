"""The engine inside an async web application: an evaluation streamed to the browser.

    python examples/web_app.py [--host 127.0.0.1] [--port 8080] [--runs DIR]
                                           # then open http://127.0.0.1:8080

``GET /`` is a page with a button; ``GET /evaluate?limit=N&backend=sim|local`` runs the shipped IMDB
example and streams every joined row the moment it exists as a server-sent event (``event: row``),
then the metrics (``event: metrics``), or why the run failed (``event: failed``); every event's data
is JSON.

The evaluation runs inside the request's own task and lives as long as the request. When the
browser goes away the run stops where it is: nobody is left to read the rest, so no further call is
paid for (a reload would start another run anyway). Every answer it had is journaled in its run
directory, the server logs one line naming it, and ``python -m engine run --resume RUN_DIR`` (or
``Evaluation(run_dir=..., resume=True)``) finishes it with no call paid twice.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import socket
from pathlib import Path

import anyio
import anyio.lowlevel
from aiohttp import web

from engine import EngineError, Evaluation, JoinedRow, TaskConfig, example_config, load_config, with_overrides

RUNS_ROOT = web.AppKey("runs_root", Path)
_log = logging.getLogger(__name__)

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>judge-engine</title>
<style>body{font:14px sans-serif;margin:2em}td{padding:2px 8px}</style></head>
<body><h1>IMDB genres, judged</h1>
<button onclick="run()">Evaluate 20 rows</button> <span id="status"></span>
<table><thead><tr><th>row</th><th>prediction</th><th>judge</th><th>truth</th></tr></thead>
<tbody id="rows"></tbody></table>
<script>
function run() {
  const rows = document.getElementById("rows"), status = document.getElementById("status");
  rows.innerHTML = ""; status.textContent = "running";
  const source = new EventSource("/evaluate?limit=20");
  source.addEventListener("row", (event) => {
    const row = JSON.parse(event.data), tr = document.createElement("tr");
    for (const value of [row.row_id, row.prediction, row.verdict, row.ground_truth_correct]) {
      const td = document.createElement("td"); td.textContent = String(value); tr.appendChild(td);
    }
    rows.appendChild(tr);
  });
  source.addEventListener("metrics", (event) => {
    const metrics = JSON.parse(event.data);
    status.textContent = `judge accuracy ${metrics.judge_accuracy}, ground truth ${metrics.ground_truth_accuracy}`;
    source.close();
  });
  source.addEventListener("failed", (event) => { status.textContent = JSON.parse(event.data); source.close(); });
}
</script></body></html>
"""


class EventStream:
    """Server-sent events to one client; a write that finds the client gone cancels ``scope``."""

    def __init__(self, response: web.StreamResponse, scope: anyio.CancelScope) -> None:
        self._response = response
        self._scope = scope

    async def send(self, name: str, data: object) -> None:
        try:
            await self._response.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
        except ConnectionResetError:  # aiohttp's "cannot write to closing transport" too
            self._scope.cancel()
            await anyio.lowlevel.checkpoint()  # the cancellation is delivered here


def _row_data(row: JoinedRow) -> dict[str, object]:
    return {
        "row_id": row.row_id,
        "status": row.status,
        "prediction": row.prediction,
        "verdict": row.verdict,
        "ground_truth_correct": row.ground_truth_correct,
        "labels": list(row.labels) if row.labels is not None else None,
    }


def _requested_config(request: web.Request) -> TaskConfig:
    """The shipped IMDB task with the query's ``limit`` and ``backend``; 400 when they are invalid."""
    try:
        limit = int(request.query.get("limit", "20"))
        backend = request.query.get("backend", "sim")
        return with_overrides(load_config(example_config("imdb")), {"dataset.limit": limit, "local.backend": backend})
    except (ValueError, EngineError) as exc:
        raise web.HTTPBadRequest(text=str(exc)) from None


def _log_stopped(evaluation: Evaluation) -> None:
    if evaluation.metrics is not None or not evaluation.started:
        return  # finished before the client left, or nothing started
    _log.warning(
        "the client left: run %s stopped with %d of %d rows done; finish it with: python -m engine run --resume %s",
        evaluation.run_dir, evaluation.stats.done, evaluation.stats.total, evaluation.run_dir,
    )


async def page(request: web.Request) -> web.Response:
    return web.Response(text=PAGE, content_type="text/html")


async def evaluate(request: web.Request) -> web.StreamResponse:
    """Run an evaluation and stream its rows as server-sent events; the run stops if the client
    leaves, whether aiohttp cancels the handler then or the next write finds the connection closed."""
    config = _requested_config(request)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    evaluation = Evaluation(config, runs_root=request.app[RUNS_ROOT])
    try:
        with anyio.CancelScope() as connection:
            events = EventStream(response, connection)
            try:
                async with evaluation:
                    async for row in evaluation:
                        await events.send("row", _row_data(row))
            except EngineError as exc:
                await events.send("failed", str(exc))
            else:
                await events.send("metrics", evaluation.metrics)
    except anyio.get_cancelled_exc_class():
        _log_stopped(evaluation)
        raise
    if connection.cancelled_caught:
        _log_stopped(evaluation)
    return response


def create_app(runs_root: Path = Path("runs")) -> web.Application:
    app = web.Application()
    app[RUNS_ROOT] = runs_root
    app.router.add_get("/", page)
    app.router.add_get("/evaluate", evaluate)
    return app


def _port(text: str) -> int:
    """A TCP port number, for argparse: a wrong one is a usage error, not a traceback."""
    if not (text.isascii() and text.isdigit()) or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0 to 65535)")
    return int(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Serve the engine's web-app example: open the URL it prints and press the button."
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=_port, default=8080,
                        help="port to listen on, 0 for any free one (default: %(default)s)")
    parser.add_argument("--runs", type=Path, default=Path("runs"), metavar="DIR",
                        help="where run directories are made (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        listener = socket.create_server((args.host, args.port))
    except OSError as exc:
        parser.exit(1, f"{parser.prog}: cannot listen on {args.host}:{args.port}: {exc.strerror}; "
                       "choose another --host or --port\n")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # The handler is cancelled the moment its client disconnects, not at its next write.
    web.run_app(
        create_app(args.runs), sock=listener, handler_cancellation=True, print=functools.partial(print, flush=True)
    )


if __name__ == "__main__":
    main()
