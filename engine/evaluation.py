"""``Evaluation``: the engine as an async library (any anyio backend).

    async with Evaluation(config) as evaluation:
        async for row in evaluation:      # joined rows, as they complete
            ...
    evaluation.metrics                    # after the block: the metrics.json contents

Entering starts the run (the embedded server too when no base URL is configured) in a task group
the evaluation owns; leaving waits for the last row, writes ``results.parquet`` and
``metrics.json``. Rows not consumed by the caller are drained, never lost: they are on disk.
"""

from __future__ import annotations

import itertools
import shutil
import time
import warnings
from contextlib import AsyncExitStack
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import polars as pl
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .config import EndpointConfig, TaskConfig
from .connect import open_providers
from .dataset import Dataset
from .errors import ConfigError, FatalError, ProviderError, engine_error_in
from .formats import DESCRIBED, StructuredOutput
from .journal import Journal, check_journal, has_records, journaled_among, repair_torn_tail, scan_journal
from .journal_totals import TOTALS_COLUMNS, JournalTotals, read_totals
from .prior import PriorPredictions, Sources, missing_prediction
from .prompts import PromptBuilder
from .provider import Provider
from .report import summary
from .response_cache import CachedStage, ResponseCache, cache_endpoint, temperature_notes
from .results import ResultsWriter
from .resume import check_mode_change, stale_rows
from .run import streams
from .run.batch_stage import BatchStage
from .run.heap import frozen_heap
from .run.lanes import Endpoint, Lane, RoutedStage, lanes_of
from .run.limits import AnyioClock, Clock, Limiter
from .run.outage import Outage
from .run.parked import Parked
from .run.pipeline import JoinState, LiveStats, Pending, Pipeline
from .run.realtime import RealtimeRunner, RealtimeStage
from .run.retry import RetryPolicy
from .run.stage import Stage
from .rundir import RunDir, check_resumable, new_run_dir, write_json
from .sessions import SessionLog, run_figures
from .types import STAGES, JoinedRow

LOCAL_MODEL_CONCURRENCY = 2


class Evaluation:
    """One run of a task: predict every row, judge every prediction, join, measure.

    Pass ``run_dir`` of an earlier run with ``resume=True`` to finish it, with ``config`` None
    for the run's own (its ``run.json``) or a config whose endpoint, limits, mode, prices and
    batch settings differ: a change to what the results depend on is refused (``ConfigError``,
    see ``engine.resume``). A resumed run also retries the rows that failed for a transient
    reason, and every failed row with ``retry_failed``. Only one process at a time may run in a
    run directory (``RunInUseError``). ``notes`` collects what a person should know about the run
    (rows done again, damaged parts set aside, a structured-output format the endpoint refused);
    ``started`` turns true once the run directory holds a run that ``resume`` can finish.
    """

    def __init__(
        self,
        config: TaskConfig | None = None,
        *,
        run_dir: Path | str | None = None,
        runs_root: Path | str = "runs",
        resume: bool = False,
        retry_failed: bool = False,
        clock: Clock | None = None,
        row_buffer: int = 64,
        provider: Provider | None = None,
        sources: Sources | None = None,
        report: bool = True,
    ) -> None:
        """``provider``: the endpoint to run against (an ``engine.provider.Provider``, such as
        ``MockProvider`` in tests), entered and closed by the evaluation; None for the one the
        config's endpoint names, or the embedded server when it has no base URL. ``sources``:
        judge the predictions of these finished runs instead of predicting (``engine.prior``:
        re-judging, or a pairwise comparison of two runs); a resumed run reads them from its
        ``run.json``. ``report``: write ``report.md`` and ``report.html`` with their plots when the
        run ends (False: only ``results.parquet`` and ``metrics.json``, the report's CPU and its
        imports saved; ``python -m engine report RUN_DIR`` writes it later)."""
        if resume:
            if run_dir is None:
                raise ValueError("resume=True needs the run_dir to resume")
            if config is None:
                config = RunDir(run_dir).config()
            if sources is None and RunDir(run_dir).is_run and (recorded := RunDir(run_dir).info().get("sources")):
                sources = Sources.from_json(recorded)
        if config is None:
            raise ValueError("an Evaluation needs a config (or resume=True with a run_dir)")
        if (config.judge_kind == "pairwise") != bool(sources and sources.pairwise):
            raise ConfigError(
                f"{config.where('judge.kind')}: a pairwise judge compares the answers of two finished runs: "
                "python -m engine judge --pairwise RUN_A RUN_B --config JUDGE.toml"
                if config.judge_kind == "pairwise" else "comparing two runs needs a judge of kind = \"pairwise\""
            )
        self.config = config
        self.sources = sources
        self.resume = resume
        self.retry_failed = retry_failed
        self.run_dir = Path(run_dir) if run_dir is not None else new_run_dir(Path(runs_root), config.name)
        self._dir = RunDir(self.run_dir)
        self.stats = LiveStats()
        self.metrics: dict[str, Any] | None = None
        self.notes: list[str] = []
        self.started = False  # run.json is written: from here on the run can be resumed
        self.base_url: str | None = config.endpoint.base_url
        self._provider = provider
        self._embedded = provider is None and not config.endpoint.base_url
        #: Each endpoint the run calls, with its limiter and outage (``engine.run.lanes``).
        self.endpoints: list[Endpoint] = []
        self.lanes = lanes_of(config)
        #: The realtime calls of each lane (a batch lane's retries of failed lines among them).
        self.runners: dict[str, RealtimeRunner] = {}
        self.formats: StructuredOutput | None = None
        self._predictions: dict[str, str] | None = None
        self._clock = clock or AnyioClock()
        self._row_buffer = row_buffer
        self._report = report
        self._stack = AsyncExitStack()
        self._rows_out: MemoryObjectReceiveStream[JoinedRow] | None = None
        self._journal: Journal | None = None
        #: Sums over every journaled call, this session's folded in as they are written.
        self._totals = JournalTotals()

    # -- lifecycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> Evaluation:
        config = self.config
        dataset = await anyio.to_thread.run_sync(
            partial(Dataset, config.dataset, label_set=config.labels, where=config.where)
        )
        builder = PromptBuilder(config, dataset.columns)
        fresh = not self.resume and not self.run_dir.exists()
        await self._stack.__aenter__()
        try:
            lock = self._dir.claim(resume=self.resume)
            self._stack.callback(lock.release)
            started = await anyio.to_thread.run_sync(self._check_resume) if self.resume else None
            _check_group_by(config, dataset.columns)
            results = ResultsWriter(self._dir, _input_columns(builder, dataset, config.report.group_by))
            if self.resume:
                await anyio.to_thread.run_sync(self._redo_stale_rows, dataset, results)
            providers = await self._connect()
            self.formats = builder.formats
            await preflight(providers, config, builder)
            self._note_formats(builder.formats)
            if config.cache_dir is not None:
                self.notes += temperature_notes(config)
            sources = self.sources.to_json() if self.sources else None
            self._dir.write_run(config, endpoint=self._endpoint_name(), started=started, sources=sources)
            self.started = True
            self._make_runners(providers, builder.formats)
            self._stack.enter_context(frozen_heap())
            await self._start(dataset, builder, results)
        except BaseException:
            await self._stack.__aexit__(None, None, None)
            if fresh and not self._dir.is_run:
                shutil.rmtree(self.run_dir, ignore_errors=True)  # nothing started: leave nothing behind
            raise
        return self

    def _check_resume(self) -> dict[str, Any]:
        """The run's ``run.json``, once this session may finish the run (see ``engine.resume``)."""
        started = check_resumable(self._dir, self.config)
        check_mode_change(self._dir, TaskConfig.model_validate(started["config"]), self.config)
        for stage in STAGES:
            path = self._dir.journal(stage)
            repair_torn_tail(path)  # a write cut short by a kill or a full disk: not damage
            check_journal(path)
        return started

    def _redo_stale_rows(self, dataset: Dataset, results: ResultsWriter) -> None:
        for part in results.set_aside_damaged():
            self.notes.append(f"{part}: a damaged results part, set aside; its rows are rebuilt from the journal")
        if results.conform_parts():
            self.notes.append("results parts written by an earlier version gained this version's columns (empty)")
        stale = stale_rows(
            results.parts(), dataset, results.input_columns, retry_failed=self.retry_failed, workdir=self.run_dir
        )
        if stale:
            results.drop_rows(stale)
            why = "failed" if self.retry_failed else "failed for a reason worth trying again"
            self.notes.append(f"{len(stale)} finished rows are done again: they {why}, or changed in the data file")

    def _note_formats(self, formats: StructuredOutput) -> None:
        for caller, format in formats.formats.items():
            self.notes.append(
                f"{caller}: the endpoint refused its structured-output format ({one_line(formats.refusals[caller])}); "
                f"its answers are constrained by {DESCRIBED[format]}"
            )

    def _make_runners(self, providers: dict[EndpointConfig, Provider], formats: StructuredOutput) -> None:
        """A limiter and an outage per endpoint, shared by every lane that calls it, and a
        realtime runner per lane.

        The limiter's latency target is a quarter of the timeout: a server that queues calls it
        cannot serve is sent fewer long before they time out (see ``Limiter``).
        """
        for endpoint, callers in self.config.endpoints.items():
            concurrency = endpoint.concurrency
            if self._provider is None and endpoint.base_url is None and self.config.local.backend == "local":
                # The local model answers one request at a time: more in flight only queue at the
                # server, where their time counts against the client's timeout.
                concurrency = min(concurrency, LOCAL_MODEL_CONCURRENCY)
            limiter = Limiter(
                concurrency=concurrency, rpm=endpoint.rpm, tpm=endpoint.tpm, clock=self._clock,
                latency_target_s=endpoint.timeout_s / 4,
            )
            outage = Outage(self._clock, timeout_s=endpoint.outage_timeout_s)
            self.endpoints.append(Endpoint(endpoint, providers[endpoint], limiter, outage, callers))
        for lane in self.lanes:
            state = self._endpoint(lane)
            policy = RetryPolicy(max_retries=lane.endpoint.max_retries)
            self.runners[lane.name] = RealtimeRunner(state.provider, state.limiter, policy, self._clock, state.outage, formats)

    def _endpoint(self, lane: Lane) -> Endpoint:
        return next(endpoint for endpoint in self.endpoints if endpoint.config == lane.endpoint)

    def _make_stages(self) -> tuple[Stage, Stage]:
        """Each lane realtime or batch, as its stage is configured, the judge lanes behind one
        routed stage; a batch predict stage flushes the judge stage after each batch, so a
        finished batch's rows are judged at once. With a response cache each lane answers what it
        holds first; a judging run's predictions come from its sources."""
        lanes: dict[str, Stage] = {}
        cache = None if self.config.cache_dir is None else self._stack.enter_context(ResponseCache(self.config.cache_dir))
        for lane in self.lanes:
            runner = self.runners[lane.name]
            stage: Stage
            if self.config.stage_mode(lane.stage) == "realtime":
                stage = RealtimeStage(runner)
            else:
                stage = BatchStage(
                    stage=lane.stage,
                    lane=lane.name,
                    provider=self._endpoint(lane).provider,
                    run_dir=self._dir,
                    run_id=self.run_dir.name,
                    settings=self.config.batch,
                    policy=RetryPolicy(max_retries=lane.endpoint.max_retries),
                    clock=self._clock,
                    realtime=runner,
                    journaled=partial(journaled_among, self._dir.journal(lane.stage)),
                    progress=self.stats.batches,
                    outage_timeout_s=lane.endpoint.outage_timeout_s,
                    creating=self._endpoint(lane).creating,
                )
            if cache is not None:
                provider_name = None if self._provider is None else type(self._provider).__name__
                stage = CachedStage(stage, cache, cache_endpoint(self.config, lane.endpoint, provider_name))
            lanes[lane.name] = stage
        judge_lanes = [lane for lane in self.lanes if lane.stage == "judge"]
        judge: Stage = lanes[judge_lanes[0].name]
        if len(judge_lanes) > 1:
            route = {caller: lane.name for lane in judge_lanes for caller in lane.callers}
            judge = RoutedStage({lane.name: lanes[lane.name] for lane in judge_lanes}, route)
        predict = lanes["predict"]
        if isinstance(predict, BatchStage):
            predict.after_batch = judge.flush
        if self._predictions is not None:
            assert self.sources is not None
            predict = PriorPredictions(self._predictions, self.sources.model())
        return predict, judge

    async def _start(self, dataset: Dataset, builder: PromptBuilder, results: ResultsWriter) -> None:
        """Start the journal writer, the pipeline over the rows still owed, and the collector."""
        journal = self._journal = Journal(self._dir, fold=self._totals.add, columns=TOTALS_COLUMNS)
        self._stack.callback(journal.close)
        sessions = SessionLog(self._dir)
        sessions.start()
        self._stack.callback(sessions.end)
        done = results.done_row_ids()
        records = await anyio.to_thread.run_sync(_journal_records, self._dir, builder.call_prefixes, done)
        owed = dataset.rows(results.input_columns, exclude=done, attach=records)
        self.stats.total = dataset.n_rows
        self.stats.started = time.perf_counter()
        self._account_for_earlier_rows(results)
        emit, joined = anyio.create_memory_object_stream[JoinedRow](self._row_buffer)
        rows_in, self._rows_out = anyio.create_memory_object_stream[JoinedRow](self._row_buffer)
        skip = None
        if self.sources is not None:
            self._predictions = await anyio.to_thread.run_sync(self.sources.predictions)
            skip = missing_prediction(self.sources, self._predictions)
        predict, judge = self._make_stages()
        rows_in_flight = 2 * max(endpoint.concurrency for endpoint in self.config.endpoints)
        if self.config.uses_batch:
            rows_in_flight = max(rows_in_flight, self.config.batch.max_rows_in_flight)
        pipeline = Pipeline(
            builder=builder,
            join=JoinState(self.config.labels, builder.judges, builder.answer, pending=self._pending_store()),
            predict=predict,
            judge=judge,
            journal=journal,
            emit=emit,
            stats=self.stats,
            rows_in_flight=rows_in_flight,
            retry_failed=self.retry_failed,
            skip=skip,
        )
        group: TaskGroup = await self._stack.enter_async_context(anyio.create_task_group())
        group.start_soon(pipeline.run, owed)
        group.start_soon(self._collect, joined, results, rows_in)

    def _pending_store(self) -> Parked[Pending] | None:
        """Where the answered calls of a row wait for its other judge calls (a panel's, or
        repeats): on disk with judge batches, as every row of the run may be waiting at once
        (None: in memory, for realtime judges, which keep few waiting)."""
        if self.config.stage_mode("judge") != "batch":
            return None
        pending: Parked[Pending] = Parked(self._dir.scratch_dir / "join.sqlite")
        self._stack.callback(pending.close)
        return pending

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        if exc_info[0] is None:
            try:
                await self._drain()
            except BaseException as error:  # cancelled because a row failed the run: say why
                exc_info = (type(error), error, error.__traceback__)
        if self._rows_out is not None:
            self._rows_out.close()
        try:
            suppressed = await self._stack.__aexit__(*exc_info)
        except BaseExceptionGroup as group:
            # What the caller's own block raised comes back as it was raised, then an engine error
            # as itself: a task group wraps both in a group the caller did not ask for.
            body = exc_info[1]
            if body is not None and group.subgroup(lambda error: error is body) is not None:
                raise body from None
            cause = engine_error_in(group)
            if cause is None:
                raise
            raise cause from None
        if exc_info[1] is not None and not suppressed:
            raise exc_info[1]
        return suppressed

    def __aiter__(self) -> MemoryObjectReceiveStream[JoinedRow]:
        assert self._rows_out is not None, "iterate inside `async with Evaluation(...)`"
        return self._rows_out

    async def _drain(self) -> None:
        if self._rows_out is not None:
            async with self._rows_out:
                async for _ in self._rows_out:
                    for _ in streams.buffered(self._rows_out):
                        pass

    def _endpoint_name(self) -> str:
        """What ``run.json`` records as the endpoint: its URL, ``embedded``, or the class of a
        provider handed in without one."""
        if self.config.endpoint.base_url:
            return self.config.endpoint.base_url
        return "embedded" if self._provider is None else type(self._provider).__name__

    async def _connect(self) -> dict[EndpointConfig, Provider]:
        """A provider per endpoint: the one handed in for all of them, or those the config names
        (and the embedded server for those without a base URL), entered on the evaluation's stack."""
        if self._provider is not None:
            provider = await self._stack.enter_async_context(self._provider)
            return dict.fromkeys(self.config.endpoints, provider)
        providers, embedded_url = await open_providers(self.config, self._stack, server_dir=self._dir.server_dir)
        self.base_url = self.config.endpoint.base_url or embedded_url
        return providers

    # -- the collector: joined rows -> parquet parts, live stats, the caller's stream --------

    def _account_for_earlier_rows(self, results: ResultsWriter) -> None:
        parts = results.parts()
        if not parts:
            return
        earlier = pl.scan_parquet(parts)
        counts = earlier.select(
            judged=(pl.col("status") == "judged").sum(),
            skipped=(pl.col("status") == "skipped").sum(),
            failed=pl.col("status").is_in(["predict_failed", "judge_failed"]).sum(),
            predicted=pl.col("prediction").is_not_null().sum(),
            verdicts=pl.col("verdict").is_not_null().sum(),
            correct=pl.col("verdict").fill_null(False).sum(),
        ).collect().row(0, named=True)
        for name, value in counts.items():
            setattr(self.stats, name, int(value))
        self.stats.done_at_start = self.stats.done

    async def _collect(
        self, joined: MemoryObjectReceiveStream[JoinedRow], results: ResultsWriter, rows_in: MemoryObjectSendStream[JoinedRow]
    ) -> None:
        async with joined, rows_in:
            async for first in joined:
                for row in itertools.chain((first,), streams.buffered(joined)):
                    self.stats.count(row)
                    await results.add(row)
                    await streams.send(rows_in, row)
            await results.flush()
            await anyio.to_thread.run_sync(results.finalize)
            self.metrics = await anyio.to_thread.run_sync(self._final_metrics)

    def _final_metrics(self) -> dict[str, Any]:
        assert self._journal is not None
        self._journal.fold_rest()  # this session's calls; earlier sessions' are read from what they wrote
        totals = read_totals(self._dir, into=self._totals, upto=self._journal.earlier_bytes)
        metrics = summary.build_metrics(
            self._dir,
            self.config,
            figures=run_figures(self._dir, totals, now=time.time()),
            totals=totals,
            backend=self.config.local.backend if self._embedded else None,
        )
        assert self.formats is not None
        metrics["structured_output"] = {
            caller: {"format": format, "refused": self.formats.refusals[caller]}
            for caller, format in self.formats.formats.items()
        }
        write_json(self._dir.metrics_file, metrics)
        if not self._report:
            return metrics
        from .report.document import write_report  # the report: imported by the runs that write one

        try:
            write_report(self._dir)
        except Exception as exc:  # the run's results and metrics are written: a report is extra
            warnings.warn(
                f"the run finished but its report could not be written ({exc!r}); "
                f"retry with: python -m engine report {self.run_dir}",
                RuntimeWarning,
                stacklevel=1,
            )
        return metrics


def one_line(text: str, limit: int = 160) -> str:
    """``text`` on one line (an endpoint's error may span several), cut to ``limit`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _input_columns(builder: PromptBuilder, dataset: Dataset, group_by: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The columns the templates read, and those the report groups by: the inputs kept in
    results.parquet."""
    return tuple(name for name in dataset.columns if name in builder.template_fields or name in group_by)



def _check_group_by(config: TaskConfig, columns: list[str]) -> None:
    for name in config.report.group_by:
        if name not in columns:
            raise ConfigError(
                f"{config.where('report.group_by')}: {name!r} is not a column of the data set (columns: {', '.join(columns)})"
            )


async def preflight(providers: dict[EndpointConfig, Provider], config: TaskConfig, builder: PromptBuilder) -> None:
    """One tiny call per batch-mode caller before anything is submitted, in its structured-output
    format: a format the endpoint refuses moves to the next one here (``engine.formats``).

    A batch only reports a rejected key, an unknown model or a refused format hours later, line
    by line; this asks once and stops the run (or settles the format) before it starts. Realtime
    stages need no preflight: their first call does the same.
    """
    for caller, stage in zip(builder.callers, (config.predict, *config.judges), strict=True):
        if stage.mode != "batch":
            continue
        while True:
            request = builder.preflight(caller)
            try:
                await providers[config.endpoint_of(caller)].complete(request)
            except FatalError:
                raise
            except ProviderError as error:
                if builder.formats.refused(request, error):
                    continue
                if error.kind == "no":
                    raise ConfigError(f"the endpoint rejected a test request for model {stage.model!r}: {error}") from None
            break


def _journal_records(
    run_dir: RunDir, call_prefixes: tuple[str, ...], done: pl.LazyFrame | None
) -> dict[str, pl.LazyFrame]:
    """The journal as frames to attach to owed rows: predictions, and each judge call's verdicts
    (by ``custom_id`` prefix; none for a stage whose journal is still empty, as in a fresh run).
    The records of ``done`` rows (in results already) are left out: a resumed run holds only
    its unfinished rows' records, whatever the size of its journal (read here, a few MB at a time)."""
    frames: dict[str, pl.LazyFrame] = {}
    if has_records(run_dir.journal("predict")):
        frames["predict"] = scan_journal(run_dir.journal("predict"), without=done)
    if has_records(run_dir.journal("judge")):
        judge = scan_journal(run_dir.journal("judge"), without=done)
        for prefix in call_prefixes:
            frames[prefix] = judge.filter(pl.col("custom_id").str.starts_with(f"{prefix}:"))
    return frames
