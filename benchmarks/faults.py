"""The fault matrix: the IMDB example run against a misbehaving server, with exact accounting.

Every scenario runs the engine (official SDK, real HTTP) against the embedded server with one
kind of fault switched on, in realtime or batch mode, and counts: rows in, rows judged, rows
failed with a reason, custom_ids seen twice in the results, requests the server saw, and 429s it
answered. ``tests/test_fault_matrix.py`` asserts the accounting; ``python -m benchmarks faults``
prints the table. The server is a simulator (sim backend): this measures the engine's handling,
not any model.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import anyio
import openai
import polars as pl

from adapters.local.backends.base import BackendError, Completion
from adapters.local.backends.sim import SimBackend, SimSettings
from adapters.local.batches import BatchSettings
from adapters.local.embedded import EmbeddedServer
from engine import Evaluation, load_config, with_overrides
from engine.journal import journal_path, scan_journal
from engine.shipped import example_config

RESULTS = Path(__file__).parent / "results"
FAST_BATCHES = {"batch.poll_initial_s": 0.02, "batch.poll_max_s": 0.1, "batch.poll_factor": 1.5}


class CountingBackend:
    """The sim backend, counting every request it sees and every 429 it answers.

    ``reached`` is set once ``calls`` reaches ``signal_after`` (see :meth:`arm`), so a test or a
    scenario can act at a chosen point of a run without sleeping. With ``announce`` off it strips
    the ``x-ratelimit-*`` headers, like an endpoint that enforces limits it never states: the
    client can only learn them from its 429s.
    """

    def __init__(self, settings: SimSettings, *, announce: bool = True, signal_after: int | None = None) -> None:
        self._inner = SimBackend(settings)
        self._announce = announce
        self._signal_after = signal_after
        self.calls = 0
        self.rate_limited = 0
        self.reached = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def arm(self, calls: int) -> None:
        """Signal ``reached`` again once the backend has seen ``calls`` requests in all."""
        self.reached.clear()
        self._signal_after = calls

    async def complete(self, body: dict[str, Any]) -> Completion:
        self.calls += 1
        if self._signal_after is not None and self.calls >= self._signal_after:
            self.reached.set()
        try:
            completion = await self._inner.complete(body)
        except BackendError as error:
            if error.status == 429:
                self.rate_limited += 1
            if not self._announce:
                error.headers = tuple(h for h in error.headers if not h[0].startswith("x-ratelimit-"))
            raise
        return completion if self._announce else replace(completion, headers=())


@dataclass(slots=True)
class Server:
    """The embedded server under test; ``restart`` keeps its port and its data."""

    backend: CountingBackend
    data_dir: Path
    batch_settings: BatchSettings = BatchSettings()
    running: EmbeddedServer | None = None
    port: int = 0

    def start(self) -> str:
        self.running = EmbeddedServer(
            self.backend, port=self.port, data_dir=self.data_dir, batch_settings=self.batch_settings
        )
        url = self.running.start()
        self.port = int(url.rsplit(":", 1)[1].split("/")[0])
        return url

    def stop(self) -> None:
        if self.running is not None:
            self.running.stop()
            self.running = None


Action = Callable[[Server, str], Coroutine[Any, Any, None]]


@dataclass(frozen=True, slots=True)
class Scenario:
    fault: str
    mode: Literal["realtime", "batch"]
    sim: SimSettings = SimSettings()
    settings: dict[str, Any] = field(default_factory=dict)
    batch_settings: BatchSettings = BatchSettings()
    action: Action | None = None
    announce_limits: bool = True


@dataclass(frozen=True, slots=True)
class Outcome:
    fault: str
    mode: str
    rows_in: int
    rows_judged: int
    rows_failed: int
    duplicates: int
    requests_sent: int
    rate_limited: int
    batches: int
    journal_agrees: bool
    failure_reasons: dict[str, int]


async def _wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.01)


async def cancel_first_batch(server: Server, url: str) -> None:
    """Cancel the first batch the run creates, from another client, while it runs."""
    async with openai.AsyncOpenAI(base_url=url, api_key="x", max_retries=0) as client:
        with anyio.fail_after(30):
            while True:
                batches = [batch async for batch in client.batches.list(limit=10)]
                if batches:
                    await client.batches.cancel(batches[-1].id)
                    return
                await anyio.sleep(0.01)


async def restart_server(server: Server, url: str) -> None:
    """Stop the server once the first batch lines ran and start it again on the same port and data."""
    await _wait_for(lambda: server.backend.calls >= 5)
    await anyio.to_thread.run_sync(server.stop)
    await anyio.to_thread.run_sync(server.start)


def scenarios() -> list[Scenario]:
    realtime = [
        Scenario("none", "realtime"),
        Scenario("rpm limit the client was not told, announced in headers", "realtime", SimSettings(rpm=3000)),
        Scenario("tpm limit the client was not told, announced in headers", "realtime", SimSettings(tpm=1_500_000)),
        Scenario("429 storm with Retry-After: an rpm limit never announced", "realtime", SimSettings(rpm=3000),
                 announce_limits=False),
        Scenario("500/502/503 at 10%", "realtime", SimSettings(error_rate=0.10)),
        Scenario("connection resets at 5%", "realtime", SimSettings(reset_rate=0.05)),
        Scenario("bodies that are not JSON at 5%", "realtime", SimSettings(malformed_rate=0.05)),
        Scenario("responses cut off mid-body at 5%", "realtime", SimSettings(truncate_rate=0.05)),
        Scenario("choices: [] or content: null at 5% each", "realtime",
                 SimSettings(empty_choices_rate=0.05, null_content_rate=0.05)),
        Scenario("a server that stops answering (timeouts) at 3%", "realtime", SimSettings(hang_rate=0.03)),
    ]
    batch = [
        Scenario("none", "batch"),
        Scenario("failed lines at 20%", "batch", SimSettings(batch_fail_rate=0.2)),
        Scenario("every line fails (completed, no output file)", "batch", SimSettings(batch_fail_rate=1.0),
                 {"batch.max_line_retries": 1}),
        Scenario("expired with partial output", "batch", SimSettings(latency_ms=100, batch_expire_after_s=0.17)),
        Scenario("cancelled batch", "batch", SimSettings(latency_ms=20), action=cancel_first_batch),
        Scenario("stuck in validating", "batch", SimSettings(batch_stall_validating=True),
                 {"batch.validating_timeout_s": 0.2, "batch.max_line_retries": 1}),
        Scenario("whole file fails validation", "batch", settings={"batch.max_requests_per_file": 40},
                 batch_settings=BatchSettings(max_requests=30)),
        Scenario("server restart between polls", "batch", SimSettings(latency_ms=2, batch_min_seconds=0.3),
                 action=restart_server),
    ]
    return realtime + batch


async def run_scenario(scenario: Scenario, workdir: Path, rows: int = 100) -> Outcome:
    backend = CountingBackend(replace(scenario.sim, seed=7), announce=scenario.announce_limits)
    server = Server(backend, workdir / "server", scenario.batch_settings)
    url = server.start()
    try:
        settings = {
            "endpoint.base_url": url,
            "dataset.limit": rows,
            "predict.mode": scenario.mode,
            "judge.mode": scenario.mode,
            "endpoint.timeout_s": 2.0,
            "endpoint.max_retries": 3,
            "batch.max_requests_per_file": 50,
            "batch.realtime_retry_below": 0,
            **FAST_BATCHES,
            **scenario.settings,
        }
        config = with_overrides(load_config(example_config("imdb")), settings)
        run_dir = workdir / "run"
        async with anyio.create_task_group() as group:
            if scenario.action is not None:
                group.start_soon(scenario.action, server, url)
            async with Evaluation(config, run_dir=run_dir) as evaluation:
                pass
    finally:
        server.stop()
    return _account(scenario, run_dir, server.backend, rows, evaluation)


def _account(scenario: Scenario, run_dir: Path, backend: CountingBackend, rows: int, evaluation: Evaluation) -> Outcome:
    results = pl.read_parquet(run_dir / "results.parquet")
    predict = scan_journal(journal_path(run_dir, "predict")).collect()
    judge = scan_journal(journal_path(run_dir, "judge")).collect()
    judged = results.filter(pl.col("status") == "judged")
    failed = results.filter(pl.col("status").is_in(["predict_failed", "judge_failed"]))
    reasons = failed["error"].str.extract(r"^([\w ]+):").value_counts()
    journal_agrees = (
        predict.height == results.filter(pl.col("status") != "skipped").height
        and judge.height == results.filter(pl.col("prediction").is_not_null()).height
        and set(judge.filter(pl.col("ok"))["row_id"]) == set(judged["row_id"])
    )
    assert evaluation.metrics is not None
    return Outcome(
        fault=scenario.fault,
        mode=scenario.mode,
        rows_in=rows,
        rows_judged=judged.height,
        rows_failed=failed.height,
        duplicates=results.height - results["row_id"].n_unique(),
        requests_sent=backend.calls,
        rate_limited=backend.rate_limited,
        batches=int(evaluation.metrics["batches_created"]),
        journal_agrees=journal_agrees,
        failure_reasons={str(reason): int(count) for reason, count in reasons.iter_rows()},
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks faults", description=__doc__)
    parser.add_argument("--rows", type=int, default=100)
    args = parser.parse_args(argv)
    outcomes = []
    for scenario in scenarios():
        with tempfile.TemporaryDirectory() as tmp:
            outcomes.append(anyio.run(run_scenario, scenario, Path(tmp), args.rows))
    print(f"| fault | mode | rows in | judged | failed | duplicates | requests sent | 429s | batches | failures |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for o in outcomes:
        reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(o.failure_reasons.items()))
        print(f"| {o.fault} | {o.mode} | {o.rows_in} | {o.rows_judged} | {o.rows_failed} | {o.duplicates} | "
              f"{o.requests_sent} | {o.rate_limited} | {o.batches} | {reasons} |")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "faults.json"
    out.write_text(json.dumps([_as_dict(outcome) for outcome in outcomes], indent=2) + "\n")
    print(f"written {out}")


def _as_dict(outcome: Outcome) -> dict[str, Any]:
    return {name: getattr(outcome, name) for name in Outcome.__slots__}
