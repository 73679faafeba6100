"""The fault matrix: the IMDB example run against a misbehaving server, with exact accounting.

Every scenario runs the engine (official SDK, real HTTP) against the embedded server (sim
backend) with one kind of fault switched on, in realtime or batch mode: faults of the server
itself, faults between client and server from the fault proxy (``benchmarks/proxy.py``: lost
and cut replies, a trickle, a blackout), and faults of how the engine is run (a second process
on its run directory, its data file edited before a resume). It counts:

- rows in, rows judged, rows failed with their reasons, row ids seen twice in the results;
- whether the journal agrees with the results (its last outcome of every request), and
  outcomes paid twice: a request journaled again although an answer for the same row data stood;
- requests the server saw, attributed to the row whose request each is (by its model and
  messages, rebuilt from the data file and the journal's predictions): the most any row cost,
  and whether each request reached the server at most 1 + its retries times, as the journal's
  ``attempts`` records them (a request the proxy refused never reached the server);
- 429s the server answered, retries the engine made;
- batches created (what the server holds for the run, listed directly, not through the proxy)
  against batches needed (the request files the run wrote, one per batch it meant to create);
- what a scenario checks beyond these (a second process refused, a resume that paid only what
  was owed and gave a fresh run's results).

``tests/test_fault_matrix.py`` asserts the accounting; ``python -m benchmarks faults`` prints
the table. A blackout lasts a real 30 s in the benchmark; in the test it is event-driven: lifted
once the proxy has reset a given number of connections, with the engine's backoff on a clock
that does not wait. The server is a simulator: this measures the engine's handling, not any
model.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal

import anthropic
import anyio
import openai
import polars as pl

from adapters.server.backends.sim import SimSettings
from adapters.server.batch_jobs import BatchSettings
from adapters.server.embedded import EmbeddedServer
from engine import Evaluation, TaskConfig, load_config, with_overrides
from engine.dataset import Dataset
from engine.errors import RunInUseError
from engine.journal import JOURNAL_SCHEMA, has_records
from engine.prompts import PromptBuilder
from engine.run.limits import Clock
from engine.rundir import RunDir
from engine.shipped import example_config
from engine.types import STAGES
from tests.support import CountingBackend, request_key

from .clocks import FastForwardClock, InstantClock
from .proxy import FaultProxy

RESULTS = Path(__file__).parent / "results"
FAST_BATCHES = {"batch.poll_initial_s": 0.02, "batch.poll_max_s": 0.1, "batch.poll_factor": 1.5}
CHAT = "/v1/chat/completions"
BATCHES = "/v1/batches"
POLL = r"/v1/batches/[^/]+"
CONTENT = r"/v1/files/[^/]+/content"
REQUEST_FILE = re.compile(r"^(predict|judge)-\d{5}\.jsonl$")
MESSAGE_BATCHES = "/v1/messages/batches"
MESSAGE_POLL = r"/v1/messages/batches/[^/]+"
Api = Literal["chat", "responses", "messages"]
#: How the engine's endpoint is set to call each API.
API_SETTINGS: dict[str, dict[str, str]] = {
    "chat": {},
    "responses": {"endpoint.api": "responses"},
    "messages": {"endpoint.provider": "anthropic"},
}


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


@dataclass(frozen=True, slots=True)
class ReplyFault:
    """A fault the proxy puts on chosen replies (see ``FaultProxy``): ``drop``, ``reset`` after
    ``amount`` bytes, or ``trickle`` at ``amount`` bytes a second, on the ``nth`` request matching
    ``method`` and ``path`` and the ``times - 1`` after it."""

    kind: Literal["drop", "reset", "trickle"]
    method: str
    path: str
    nth: int = 1
    times: int = 1
    amount: float = 0.0

    def apply(self, proxy: FaultProxy) -> None:
        if self.kind == "drop":
            proxy.drop_reply(self.method, self.path, nth=self.nth, times=self.times)
        elif self.kind == "reset":
            proxy.reset_reply(self.method, self.path, after_bytes=int(self.amount), nth=self.nth, times=self.times)
        else:
            proxy.trickle_reply(self.method, self.path, bytes_per_second=self.amount, nth=self.nth, times=self.times)

    def fired(self, proxy: FaultProxy) -> bool:
        """Whether the run made every request this fault was to fall on."""
        return proxy.count(self.method, self.path) >= self.nth + self.times - 1

    def __str__(self) -> str:
        which = f"#{self.nth}" if self.times == 1 else f"#{self.nth}-{self.nth + self.times - 1}"
        return f"{self.kind} of the reply to {self.method} {self.path} {which}"


@dataclass(frozen=True, slots=True)
class Blackout:
    """The endpoint unreachable (the proxy resets every connection at once) from the ``after``-th
    request matching ``method`` and ``path`` on, for longer than ``endpoint.max_retries`` would
    survive: ``seconds`` of real time in the benchmark; in tests, until the proxy has reset
    ``resets`` connections, with the engine's backoff on a clock that does not wait."""

    method: str
    path: str
    after: int
    resets: int
    seconds: float = 30.0


@dataclass(slots=True)
class Harness:
    """One scenario's world: its server, the fault proxy in front of it (if the scenario needs
    one), the engine's config and clock, and what the scenario checked and noted."""

    scenario: Scenario
    workdir: Path
    server: Server
    direct_url: str
    url: str
    proxy: FaultProxy | None
    config: TaskConfig
    clock: Clock | None
    real_time: bool
    data_files: list[Path]
    checks: dict[str, bool] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def run_dir(self) -> Path:
        return self.workdir / "run"

    @property
    def backend(self) -> CountingBackend:
        return self.server.backend


Action = Callable[[Harness], Coroutine[Any, Any, None]]
Sessions = Callable[[Harness], Coroutine[Any, Any, Evaluation]]


async def _wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll ``predicate``: it reads what the server's thread counts or the engine writes to its
    journal, and neither sets an event this task could wait on."""
    with anyio.fail_after(timeout):
        while not predicate():  # noqa: ASYNC110
            await anyio.sleep(0.01)


# -- actions: something done to the server beside the run -----------------------------------


async def cancel_first_batch(harness: Harness) -> None:
    """Cancel the first batch the run creates, from another client, while it runs."""
    async with openai.AsyncOpenAI(base_url=harness.direct_url, api_key="x", max_retries=0) as client:
        with anyio.fail_after(30):
            while True:
                batches = [batch async for batch in client.batches.list(limit=10)]
                if batches:
                    await client.batches.cancel(batches[-1].id)
                    return
                await anyio.sleep(0.01)


async def restart_server(harness: Harness) -> None:
    """Stop the server once the first batch lines ran and start it again on the same port and data."""
    await _wait_for(lambda: harness.backend.calls >= 5)
    await anyio.to_thread.run_sync(harness.server.stop)
    await anyio.to_thread.run_sync(harness.server.start)


async def black_out(harness: Harness) -> None:
    """The scenario's :class:`Blackout`: real seconds in the benchmark, event-driven in tests."""
    blackout, proxy = harness.scenario.blackout, harness.proxy
    assert blackout is not None and proxy is not None
    await proxy.await_for(lambda seen: seen.count(blackout.method, blackout.path) >= blackout.after)
    if harness.real_time:
        proxy.blackout(blackout.seconds, refuse=False)
        await proxy.await_for(lambda seen: not seen.down, timeout=blackout.seconds + 30)
        harness.notes.append(f"down for a real {blackout.seconds:g} s: {proxy.refused} connections reset")
    else:
        proxy.blackout(refuse=False)
        await proxy.await_for(lambda seen: seen.refused >= blackout.resets)
        proxy.lift()
        harness.notes.append(
            f"down until {blackout.resets} connections were reset (backoff on a clock that does not wait)"
        )


# -- sessions: how the engine is run -------------------------------------------------------


async def one_session(harness: Harness) -> Evaluation:
    """The run from start to end, with the scenario's action and blackout beside it."""
    async with anyio.create_task_group() as group:
        if harness.scenario.action is not None:
            group.start_soon(harness.scenario.action, harness)
        if harness.scenario.blackout is not None:
            group.start_soon(black_out, harness)
        async with Evaluation(harness.config, run_dir=harness.run_dir, clock=harness.clock) as evaluation:
            pass
    return evaluation


async def second_process_refused(harness: Harness) -> Evaluation:
    """Once the run's first row is joined, while it goes on, a second run into its directory
    and a resume of it are tried (as a second process would): both must be refused."""
    async with Evaluation(harness.config, run_dir=harness.run_dir, clock=harness.clock) as evaluation:
        async for _ in evaluation:
            break  # the run is under way; leaving the block takes the rest of its rows
        second_run = await _refused(lambda: Evaluation(harness.config, run_dir=harness.run_dir))
        second_resume = await _refused(lambda: Evaluation(run_dir=harness.run_dir, resume=True))
    harness.checks["a second run in the running run's directory is refused"] = second_run
    harness.checks["a resume of the running run is refused"] = second_resume
    return evaluation


async def _refused(second: Callable[[], Evaluation]) -> bool:
    try:
        async with second():
            pass
    except RunInUseError:
        return True
    return False


async def data_changed_before_resume(harness: Harness) -> Evaluation:
    """A run cut once half its requests are answered and journaled (the rest held at the server,
    never answered: the cut pays for nothing unjournaled); its data file then has every 8th row
    edited and is reversed; the run is resumed. Rows carry an id column, so reordering keeps
    their ids. The resume must send exactly the requests owed (rows not answered before the cut,
    and the edited ones, again) and give a fresh run's results on the edited file."""
    data, before = harness.workdir / "movies.csv", harness.workdir / "movies-before.csv"
    movies = pl.read_csv(harness.config.dataset.path, infer_schema=False, n_rows=harness.config.dataset.limit)
    movies = movies.with_row_index("movie").with_columns(pl.col("movie").cast(pl.String))
    movies.write_csv(data)
    shutil.copyfile(data, before)
    harness.config = with_overrides(harness.config, {"dataset.path": str(data), "dataset.id_column": "movie"})
    harness.data_files = [before, data]
    half = movies.height

    harness.backend.hold_after(half)
    with anyio.CancelScope() as cut:
        async with anyio.create_task_group() as group:
            group.start_soon(_cancel_when, cut, lambda: _answers_journaled(harness.run_dir) >= half)
            async with Evaluation(harness.config, run_dir=harness.run_dir, clock=harness.clock):
                pass
    await anyio.to_thread.run_sync(harness.server.stop)  # a request still on its way is held, not answered
    harness.backend.hold_after(None)
    await anyio.to_thread.run_sync(harness.server.start)

    edited = movies.filter(pl.int_range(pl.len()) % 8 == 0)["movie"].to_list()
    movies.with_columns(
        pl.when(pl.col("movie").is_in(edited)).then(pl.col("Overview") + " Edited.").otherwise(pl.col("Overview"))
    ).reverse().write_csv(data)
    owed = _owed_requests(harness.run_dir, movies["movie"].to_list(), set(edited))
    sent_before = harness.backend.calls
    async with Evaluation(run_dir=harness.run_dir, resume=True, clock=harness.clock) as resumed:
        pass
    sent = harness.backend.calls - sent_before
    harness.checks[f"the resume sent only the {owed} requests owed"] = sent == owed
    harness.checks["the results equal a fresh run's on the edited file"] = await _equals_fresh_run(harness)
    harness.notes.append(f"cut after {half} answers; {len(edited)} rows edited, file reversed; the resume sent {sent}")
    return resumed


async def _cancel_when(scope: anyio.CancelScope, predicate: Callable[[], bool]) -> None:
    await _wait_for(predicate)
    scope.cancel()


def _answers_journaled(run_dir: Path) -> int:
    """Successful outcomes in the run's journals, whole lines only (one may be being written)."""
    answers = 0
    for stage in STAGES:
        path = RunDir(run_dir).journal(stage)
        if path.exists():
            text = path.read_text(encoding="utf-8")
            answers += sum(json.loads(line)["ok"] for line in text[: text.rfind("\n") + 1].splitlines())
    return answers


def _owed_requests(run_dir: Path, row_ids: list[str], edited: set[str]) -> int:
    """The requests a resume must send: predict and judge for a row without a journaled answer
    or whose data changed, the judge alone for a row predicted but not judged."""
    answered = {stage: set(_journal(run_dir, stage).filter(pl.col("ok"))["row_id"]) for stage in STAGES}
    owed = 0
    for row_id in row_ids:
        if row_id in edited or row_id not in answered["predict"]:
            owed += 2
        elif row_id not in answered["judge"]:
            owed += 1
    return owed


async def _equals_fresh_run(harness: Harness) -> bool:
    """Whether the run's results are those of a fresh run of its config, on a server of its own."""
    fresh = harness.workdir / "fresh"
    with EmbeddedServer(CountingBackend(replace(harness.scenario.sim, seed=7))) as url:
        async with Evaluation(with_overrides(harness.config, {"endpoint.base_url": url}), run_dir=fresh):
            pass
    return _comparable(harness.run_dir).equals(_comparable(fresh))


def _comparable(run_dir: Path) -> pl.DataFrame:
    return pl.read_parquet(run_dir / "results.parquet").drop("predict_latency_s", "judge_latency_s")


# -- the matrix ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scenario:
    """One row of the matrix. ``proxy_faults`` and ``blackout`` put the fault proxy between the
    engine and the server; ``clock`` makes the engine's clock (where the run would otherwise
    wait out real time: only in tests, see ``run_scenario``); ``sessions`` runs the engine."""

    fault: str
    mode: Literal["realtime", "batch"]
    sim: SimSettings = SimSettings()
    settings: dict[str, Any] = field(default_factory=dict)
    batch_settings: BatchSettings = BatchSettings()
    action: Action | None = None
    announce_limits: bool = True
    proxy_faults: tuple[ReplyFault, ...] = ()
    blackout: Blackout | None = None
    clock: Callable[[], Clock] | None = None
    sessions: Sessions = one_session
    api: Api = "chat"


@dataclass(frozen=True, slots=True)
class Outcome:
    """A scenario's accounting (see the module doc)."""

    fault: str
    mode: str
    api: str
    rows_in: int
    rows_judged: int
    rows_failed: int
    failure_reasons: dict[str, int]
    duplicates: int
    journal_agrees: bool
    paid_twice: int
    requests_sent: int
    requests_seen: int
    requests_journaled: int
    unattributed: int
    max_requests_per_row: int
    within_retries: bool
    retries: int
    rate_limited: int
    batches_created: int
    batches_needed: int
    checks: dict[str, bool]
    notes: tuple[str, ...]


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
        Scenario("30 s blackout, max_retries 1", "realtime", settings={"endpoint.max_retries": 1},
                 blackout=Blackout("POST", CHAT, after=40, resets=40), clock=InstantClock),
        Scenario("a reply trickling at 20 B/s, timeout 2 s", "realtime",
                 proxy_faults=(ReplyFault("trickle", "POST", CHAT, nth=20, times=2, amount=20),)),
        Scenario("a one-slot server (40 ms a call) at concurrency 64, timeout 1.6 s", "realtime",
                 SimSettings(slots=1, latency_ms=40), {"endpoint.concurrency": 64, "endpoint.timeout_s": 1.6}),
        Scenario("a second process on the run directory", "realtime", sessions=second_process_refused),
        Scenario("data file edited and reordered before resume", "realtime", settings={"endpoint.timeout_s": 30},
                 sessions=data_changed_before_resume),
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
        Scenario("reply to batch-create lost (the first two)", "batch",
                 proxy_faults=(ReplyFault("drop", "POST", BATCHES, times=2),)),
        Scenario("reply to a poll lost, then one reset mid-reply", "batch",
                 proxy_faults=(ReplyFault("drop", "GET", POLL), ReplyFault("reset", "GET", POLL, nth=2, amount=100))),
        Scenario("reset during the output download (after 1000 bytes)", "batch",
                 proxy_faults=(ReplyFault("reset", "GET", CONTENT, amount=1000),)),
        Scenario("30 s blackout from the first poll, max_retries 1", "batch", SimSettings(batch_min_seconds=0.3),
                 {"endpoint.max_retries": 1}, blackout=Blackout("GET", POLL, after=1, resets=10),
                 clock=FastForwardClock),
    ]
    return realtime + batch + _other_apis()


def _other_apis() -> list[Scenario]:
    """The rows every API has: OpenAI's Responses API and Anthropic's Messages API (there the
    backend's 503 is Anthropic's 529 overloaded_error, and batches are Message Batches, created
    with the requests inline and found again by their content when a create's reply is lost)."""
    rows = []
    creates: tuple[tuple[Api, str], ...] = (("responses", BATCHES), ("messages", MESSAGE_BATCHES))
    for api, create in creates:
        rows += [
            Scenario("none", "realtime", api=api),
            Scenario("429 storm with Retry-After: an rpm limit never announced", "realtime", SimSettings(rpm=3000),
                     announce_limits=False, api=api),
            Scenario("500/502/503 at 10%" if api == "responses" else "500/502/529 overloaded at 10%", "realtime",
                     SimSettings(error_rate=0.10), api=api),
            Scenario("connection resets at 5%", "realtime", SimSettings(reset_rate=0.05), api=api),
            Scenario("none", "batch", api=api),
            Scenario("failed lines at 20%", "batch", SimSettings(batch_fail_rate=0.2), api=api),
            Scenario("reply to batch-create lost (the first two)", "batch",
                     proxy_faults=(ReplyFault("drop", "POST", create, times=2),), api=api),
        ]
        if api == "responses":
            # Messages: a restart mid-poll once left a connection the server had accepted while
            # closing unclosed (a ResourceWarning, 1 run in 3 under CI load): not yet understood,
            # so not in the matrix; tests/test_server_message_batches.py restarts a server mid-batch.
            rows.append(Scenario("server restart between polls", "batch", SimSettings(latency_ms=2, batch_min_seconds=0.3),
                                 action=restart_server, api=api))
    return rows


async def run_scenario(scenario: Scenario, workdir: Path, rows: int = 100, *, real_time: bool = False) -> Outcome:
    """Run one scenario in ``workdir`` over ``rows`` rows and account for it. ``real_time``: the
    engine keeps its real clock and a blackout lasts its real seconds (the benchmark)."""
    backend = CountingBackend(replace(scenario.sim, seed=7), announce=scenario.announce_limits)
    server = Server(backend, workdir / "server", scenario.batch_settings)
    direct_url = server.start()
    proxy = FaultProxy(direct_url) if scenario.proxy_faults or scenario.blackout is not None else None
    try:
        url = proxy.start() if proxy is not None else direct_url
        for fault in scenario.proxy_faults:
            assert proxy is not None
            fault.apply(proxy)
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
            **API_SETTINGS[scenario.api],
            **scenario.settings,
        }
        config = with_overrides(load_config(example_config("imdb")), settings)
        harness = Harness(
            scenario=scenario,
            workdir=workdir,
            server=server,
            direct_url=direct_url,
            url=url,
            proxy=proxy,
            config=config,
            clock=None if real_time or scenario.clock is None else scenario.clock(),
            real_time=real_time,
            data_files=[config.dataset.path],
        )
        evaluation = await scenario.sessions(harness)
        if proxy is not None:
            for fault in scenario.proxy_faults:
                harness.checks[f"the {fault} happened"] = fault.fired(proxy)
        created = await anyio.to_thread.run_sync(_batches_created, direct_url, harness.run_dir.name, scenario.api)
    finally:
        if proxy is not None:
            proxy.stop()
        server.stop()
    return _account(harness, evaluation, created)


def _batches_created(url: str, run_id: str, api: Api) -> int:
    """The batches the server holds for the run, listed directly (Message Batches carry no
    metadata: the scenario's server holds this run's only)."""
    if api == "messages":
        with anthropic.Anthropic(base_url=url.removesuffix("/v1"), api_key="x", max_retries=0) as messages:
            return sum(1 for _ in messages.messages.batches.list(limit=100))
    with openai.OpenAI(base_url=url, api_key="x", max_retries=0) as client:
        return sum(1 for batch in client.batches.list(limit=100) if (batch.metadata or {}).get("engine_run") == run_id)


def _journal(run_dir: Path, stage: str) -> pl.DataFrame:
    """Every line of a stage's journal, in order (``scan_journal`` keeps only the last per request)."""
    path = run_dir / "journal" / f"{stage}.ndjson"
    return pl.read_ndjson(path, schema=JOURNAL_SCHEMA) if has_records(path) else pl.DataFrame(schema=JOURNAL_SCHEMA)


def _account(harness: Harness, evaluation: Evaluation, batches_created: int) -> Outcome:
    run_dir = harness.run_dir
    results = pl.read_parquet(run_dir / "results.parquet")
    journal = {stage: _journal(run_dir, stage) for stage in STAGES}
    last = {stage: frame.unique("custom_id", keep="last", maintain_order=True) for stage, frame in journal.items()}
    judged = results.filter(pl.col("status") == "judged")
    failed = results.filter(pl.col("status").is_in(["predict_failed", "judge_failed"]))
    reasons = failed["error"].str.extract(r"^([\w ]+):").value_counts()
    predicted = results.filter(pl.col("prediction").is_not_null())
    journal_agrees = (
        last["predict"].height == results.filter(pl.col("status") != "skipped").height
        and set(last["predict"].filter(pl.col("ok"))["row_id"]) == set(predicted["row_id"])
        and last["judge"].height == predicted.height
        and set(last["judge"].filter(pl.col("ok"))["row_id"]) == set(judged["row_id"])
    )
    attempts: Counter[str] = Counter()
    for frame in journal.values():
        for custom_id, tries in frame.select("custom_id", "attempts").iter_rows():
            attempts[custom_id] += tries or 1
    seen, row_of, unattributed = _requests_by_custom_id(harness, pl.concat(journal.values()))
    per_row: Counter[str] = Counter()
    for custom_id, count in seen.items():
        per_row[row_of[custom_id]] += count
    needed = sum(1 for path in (run_dir / "batches").glob("*.jsonl") if REQUEST_FILE.match(path.name))
    metrics = evaluation.metrics
    assert metrics is not None
    return Outcome(
        fault=harness.scenario.fault,
        mode=harness.scenario.mode,
        api=harness.scenario.api,
        rows_in=int(harness.config.dataset.limit or results.height),
        rows_judged=judged.height,
        rows_failed=failed.height,
        failure_reasons={str(reason): int(count) for reason, count in reasons.iter_rows()},
        duplicates=results.height - results["row_id"].n_unique(),
        journal_agrees=journal_agrees,
        paid_twice=sum(_paid_twice(frame) for frame in journal.values()),
        requests_sent=harness.backend.calls,
        requests_seen=sum(seen.values()),
        requests_journaled=sum(attempts.values()),
        unattributed=unattributed,
        max_requests_per_row=max(per_row.values(), default=0),
        within_retries=all(count <= attempts[custom_id] for custom_id, count in seen.items()),
        retries=int(metrics["retries"]),
        rate_limited=harness.backend.rate_limited,
        batches_created=batches_created,
        batches_needed=needed,
        checks=dict(harness.checks),
        notes=tuple(harness.notes),
    )


def _paid_twice(journal: pl.DataFrame) -> int:
    """Requests journaled again after an answer for the same row data (fingerprint) stood."""
    answered: set[tuple[str, str | None]] = set()
    twice = 0
    for custom_id, ok, fingerprint in journal.select("custom_id", "ok", "fingerprint").iter_rows():
        twice += (custom_id, fingerprint) in answered
        if ok:
            answered.add((custom_id, fingerprint))
    return twice


def _requests_by_custom_id(harness: Harness, journal: pl.DataFrame) -> tuple[Counter[str], dict[str, str], int]:
    """The requests the server saw, per custom_id, with the row of each custom_id, and how many
    it saw that are no row's request (nor the batch preflight's).

    Each request is told by :func:`request_key`, rebuilt as the engine builds it: predict from
    every version of the data file the run read, judge from those and each journaled prediction.
    """
    predictions: dict[str, list[str]] = {}
    for row_id, content in journal.filter(pl.col("ok") & pl.col("custom_id").str.starts_with("predict:")).select(
        "row_id", "content"
    ).iter_rows():
        predictions.setdefault(row_id, []).append(content)
    owners: dict[str, tuple[str, str] | None] = {}
    for path in harness.data_files:
        config = with_overrides(harness.config, {"dataset.path": str(path)})
        dataset = Dataset(config.dataset, label_set=config.labels, where=config.where)
        builder = PromptBuilder(config, dataset.columns)
        columns = tuple(name for name in dataset.columns if name in builder.template_fields)
        for caller in builder.callers:
            owners[request_key(builder.preflight(caller).body)] = None
        for row, _ in dataset.rows(columns):
            requests = [builder.predict(row)]
            for content in predictions.get(row.row_id, []):
                answer = builder.answer("predict", content)
                requests += [builder.judge(row, answer, index) for index in range(len(builder.judge_prefixes))]
            for request in requests:
                owners[request_key(request.body)] = (request.custom_id, row.row_id)
    seen: Counter[str] = Counter()
    row_of: dict[str, str] = {}
    unattributed = 0
    for key, count in harness.backend.requests.items():
        if key not in owners:
            unattributed += count
        elif (owner := owners[key]) is not None:
            seen[owner[0]] += count
            row_of[owner[0]] = owner[1]
    return seen, row_of, unattributed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks faults", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100)
    args = parser.parse_args(argv)
    outcomes = []
    for scenario in scenarios():
        with tempfile.TemporaryDirectory() as tmp:
            outcomes.append(anyio.run(partial(run_scenario, scenario, Path(tmp), args.rows, real_time=True)))
    print("| fault | mode | API | rows in | judged | failed (reasons) | dup. | journal agrees, none paid twice "
          "| requests seen / journaled | most per row, ≤ 1 + retries | 429s | batches created / needed | checks |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for o in outcomes:
        reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(o.failure_reasons.items()))
        checks = "; ".join([f"{check}: {'yes' if ok else 'NO'}" for check, ok in o.checks.items()] + list(o.notes))
        batches = f"{o.batches_created} / {o.batches_needed}" if o.mode == "batch" else "-"
        failed = f"{o.rows_failed} ({reasons})" if reasons else str(o.rows_failed)
        unattributed = f" (+{o.unattributed} not a row)" if o.unattributed else ""
        print(f"| {o.fault} | {o.mode} | {o.api} | {o.rows_in} | {o.rows_judged} | {failed} "
              f"| {o.duplicates} | {_yes(o.journal_agrees and o.paid_twice == 0)} "
              f"| {o.requests_seen} / {o.requests_journaled}{unattributed} "
              f"| {o.max_requests_per_row}, {_yes(o.within_retries)} | {o.rate_limited} | {batches} | {checks} |")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "faults.json"
    out.write_text(json.dumps([_as_dict(outcome) for outcome in outcomes], indent=2) + "\n")
    print(f"written {out}")


def _yes(ok: bool) -> str:
    return "yes" if ok else "NO"


def _as_dict(outcome: Outcome) -> dict[str, Any]:
    return {name: getattr(outcome, name) for name in Outcome.__slots__}
