"""The web-application example, through a real HTTP client: rows arrive as server-sent events."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
from aiohttp import web

from examples.web_app import create_app


async def test_rows_stream_to_the_client_as_server_sent_events(tmp_path: Path) -> None:
    runner = web.AppRunner(create_app(tmp_path / "runs"))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    events: list[tuple[str, dict[str, object]]] = []
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/") as page:
                assert "EventSource" in await page.text()
            async with session.get(f"http://127.0.0.1:{port}/evaluate?limit=12") as response:
                assert response.headers["Content-Type"].startswith("text/event-stream")
                name = ""
                async for raw in response.content:
                    line = raw.decode().rstrip("\n")
                    if line.startswith("event: "):
                        name = line.removeprefix("event: ")
                    elif line.startswith("data: "):
                        events.append((name, json.loads(line.removeprefix("data: "))))
            async with session.get(f"http://127.0.0.1:{port}/evaluate?limit=zero") as bad:
                assert bad.status == 400
    finally:
        await runner.cleanup()
    rows = [data for name, data in events if name == "row"]
    assert len(rows) == 12 and {row["status"] for row in rows} == {"judged"}
    assert events[-1][0] == "metrics" and events[-1][1]["n_judged"] == 12
    assert len(list((tmp_path / "runs").iterdir())) == 1  # the run directory, resumable
