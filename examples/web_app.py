"""The engine inside an async web application: an evaluation streamed to the browser.

    python examples/web_app.py            # then open http://127.0.0.1:8080

``GET /`` is a page with a button; ``GET /evaluate?limit=N&backend=sim|local`` runs the shipped IMDB
example and streams every joined row the moment it exists as a server-sent event (``event: row``),
then the metrics (``event: metrics``). The evaluation runs inside the request's own task: when the
browser goes away the run is cancelled, and what it finished stays in its run directory, ready for
``python -m engine run --resume``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from aiohttp import web

from engine import EngineError, Evaluation, JoinedRow, load_config, with_overrides
from engine.shipped import example_config

RUNS_ROOT = web.AppKey("runs_root", Path)

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
  source.addEventListener("failed", (event) => { status.textContent = event.data; source.close(); });
}
</script></body></html>
"""


def _row_event(row: JoinedRow) -> bytes:
    data = {
        "row_id": row.row_id,
        "status": row.status,
        "prediction": row.prediction,
        "verdict": row.verdict,
        "ground_truth_correct": row.ground_truth_correct,
        "labels": list(row.labels) if row.labels is not None else None,
    }
    return f"event: row\ndata: {json.dumps(data)}\n\n".encode()


async def page(request: web.Request) -> web.Response:
    return web.Response(text=PAGE, content_type="text/html")


async def evaluate(request: web.Request) -> web.StreamResponse:
    """Run an evaluation and stream its rows as server-sent events."""
    try:
        limit = int(request.query.get("limit", "20"))
        backend = request.query.get("backend", "sim")
        config = with_overrides(
            load_config(example_config("imdb")), {"dataset.limit": limit, "local.backend": backend}
        )
    except (ValueError, EngineError) as exc:
        raise web.HTTPBadRequest(text=str(exc)) from None
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    try:
        async with Evaluation(config, runs_root=request.app[RUNS_ROOT]) as evaluation:
            async for row in evaluation:
                await response.write(_row_event(row))
        await response.write(f"event: metrics\ndata: {json.dumps(evaluation.metrics)}\n\n".encode())
    except EngineError as exc:
        await response.write(f"event: failed\ndata: {exc}\n\n".encode())
    return response


def create_app(runs_root: Path = Path("runs")) -> web.Application:
    app = web.Application()
    app[RUNS_ROOT] = runs_root
    app.router.add_get("/", page)
    app.router.add_get("/evaluate", evaluate)
    return app


if __name__ == "__main__":
    web.run_app(create_app(), host="127.0.0.1", port=int(sys.argv[1]) if len(sys.argv) > 1 else 8080)
