"""``python -m engine``: argument parsing only; the work is in the library.

``run`` exits with 0 when every row was judged (or skipped for an empty input), 1 when the run
finished but judged no row, 2 when an error stopped it or kept it from starting (a bad config or
data file, a rejected key, an unknown model, a run directory in use, an endpoint gone for good;
what finished is kept, and the message says how to resume), 3 when it finished with some rows
failed (``--resume`` tries the transient failures again, ``--retry-failed`` every one), and 130
when interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from functools import partial
from pathlib import Path
from typing import Any

import anyio
from pydantic import ValidationError

from .config import CalibrationConfig, LocalServerConfig, TaskConfig, load_config, merge_tables, with_overrides
from .connect import Upstream, serve
from .errors import ConfigError, EngineError, ProviderError
from .evaluation import Evaluation
from .prior import Sources, judging_config
from .progress import Style
from .rundir import RunDir
from .shipped import example_config


def _run_parser(commands: Any) -> None:
    run = commands.add_parser("run", help="evaluate a task: predict, judge, join, report")
    run.add_argument("config", nargs="?", help="task TOML file (default: the shipped IMDB example)")
    run.add_argument("--mode", choices=["realtime", "batch"], help="how both stages run (default: the config's)")
    run.add_argument("--dry-run", action="store_true", help="estimate requests, tokens and cost; send nothing")
    run.add_argument("--limit", type=int, help="evaluate at most N rows")
    run.add_argument("--out", type=Path, help="run directory (default: runs/<task>-<time>-<id>)")
    run.add_argument(
        "--resume", type=Path, metavar="RUN_DIR",
        help="finish an earlier run: rows that failed for a transient reason, or changed in the data file, "
        "are done again; endpoint, limits, mode and prices may change (flags, --set, or a CONFIG), "
        "what the results depend on may not",
    )
    run.add_argument("--retry-failed", action="store_true", help="with --resume: try every failed row again")
    run.add_argument("--base-url", help="OpenAI-compatible endpoint (default: the embedded server)")
    run.add_argument("--api-key-env", help="name of the environment variable holding the API key")
    run.add_argument("--model", help="base model (predict stage)")
    run.add_argument("--judge-model", help="judge model")
    run.add_argument("--concurrency", type=int, help="requests in flight at most")
    run.add_argument("--rpm", type=float, help="requests per minute budget")
    run.add_argument("--tpm", type=float, help="tokens per minute budget")
    run.add_argument("--sim-latency-ms", type=float, help="latency of the embedded sim backend")
    run.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", type=_setting,
        help="override any config value, e.g. --set batch.poll_initial_s=1 (TOML value; repeatable)",
    )
    run.add_argument("--cache", type=Path, metavar="DIR",
                     help="a response cache shared across runs: a request already answered is not sent again")
    run.add_argument("--quiet", action="store_true", help="plain progress lines, even on a terminal")
    run.add_argument("--no-report", action="store_true",
                     help="write results.parquet and metrics.json only (python -m engine report RUN_DIR writes the report later)")
    run.add_argument("--json-progress", action="store_true", help="progress as JSON lines (every 5 s)")


def _setting(text: str) -> tuple[str, Any]:
    """``key=value`` as a line of TOML (``batch.poll_initial_s=1``, ``prices."m".input=0.2``);
    a value that is not TOML is taken as text. Returns the top-level key and its table."""
    key, separator, value = text.partition("=")
    if not separator or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    for candidate in (value, json.dumps(value)):
        try:
            parsed = tomllib.loads(f"{key} = {candidate}")
            break
        except tomllib.TOMLDecodeError:
            continue
    else:
        raise argparse.ArgumentTypeError(f"{key!r} is not a config key")
    ((top, table),) = parsed.items()
    return top, table


def _serve_parser(commands: Any) -> None:
    serve = commands.add_parser("serve", help="run the embedded OpenAI-compatible server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    serve.add_argument(
        "--backend", choices=["sim", "local", "upstream"], default="sim",
        help="sim: simulated answers; local: a small real model on this CPU; upstream: forward to --upstream-url",
    )
    serve.add_argument("--upstream-url", help="the OpenAI-compatible endpoint the upstream backend forwards to")
    serve.add_argument("--upstream-api-key-env", help="variable holding the upstream's API key")
    serve.add_argument("--api-key-env", help="require 'Authorization: Bearer' with the key in this variable")
    serve.add_argument("--threads", type=int, help="CPU threads of the local model (default: all cores)")
    serve.add_argument("--latency-ms", type=float, default=0.0)
    serve.add_argument("--rpm", type=float)
    serve.add_argument("--tpm", type=float)
    serve.add_argument("--error-rate", type=float, default=0.0, help="share of calls answered 5xx")
    serve.add_argument("--batch-min-seconds", type=float, default=0.0, help="a batch's turnaround at least")
    serve.add_argument("--data-dir", type=Path, help="keep files and batches here across restarts (default: a temporary dir)")
    serve.add_argument("--seed", type=int, default=0)


def _judge_parser(commands: Any) -> None:
    judge = commands.add_parser(
        "judge", help="judge the predictions of finished runs again, or compare two runs' answers pairwise",
        description="Judge the predictions of a finished run with another judge (or a panel, or a score judge), "
        "or with --pairwise which of two runs answered each row better. No predict call is made; the new run "
        "directory names its sources, resumes with `run --resume` and reports like any run.",
    )
    judge.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR", help="the finished run (two with --pairwise)")
    judge.add_argument("--pairwise", action="store_true", help="compare two runs: which answer is better, row by row")
    judge.add_argument(
        "--config", type=Path, metavar="JUDGE.toml",
        help="the judge: a [judge] table or [[judge]] panel (and optionally [endpoint], [prices], [batch]); "
        "a whole task file serves (default: the source's judge; with --pairwise a built-in pairwise judge)",
    )
    judge.add_argument("--mode", choices=["realtime", "batch"], help="how the judge calls go (default: the judge's)")
    judge.add_argument("--out", type=Path, help="run directory (default: runs/<task>-judged-<time>-<id>)")
    judge.add_argument("--base-url", help="OpenAI-compatible endpoint (default: the source's)")
    judge.add_argument("--api-key-env", help="name of the environment variable holding the API key")
    judge.add_argument("--judge-model", help="judge model")
    judge.add_argument("--concurrency", type=int, help="requests in flight at most")
    judge.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", type=_setting,
                       help="override any config value, e.g. --set judge.reasoning=true (repeatable)")
    judge.add_argument("--cache", type=Path, metavar="DIR",
                       help="a response cache shared across runs: a request already answered is not sent again")
    judge.add_argument("--quiet", action="store_true", help="plain progress lines, even on a terminal")
    judge.add_argument("--no-report", action="store_true", help="write results.parquet and metrics.json only")
    judge.add_argument("--json-progress", action="store_true", help="progress as JSON lines (every 5 s)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    _run_parser(commands)
    _serve_parser(commands)
    _judge_parser(commands)
    report = commands.add_parser("report", help="write report.md, report.html and plots from a run directory")
    report.add_argument("run_dir", type=Path)
    report.add_argument("--labels", type=Path, metavar="FILE",
                        help="trusted labels for some rows (csv, parquet or ndjson), joined by --id-column: metrics.json "
                        "is computed again with them (PPI and the judge's error rates); no call is made")
    report.add_argument("--id-column", help="the labels file's row id column (the data set's ids)")
    labels = report.add_mutually_exclusive_group()
    labels.add_argument("--label-column", help="the labels file's column of true labels")
    labels.add_argument("--verdict-column", help="the labels file's column of a person's verdicts (correct/incorrect)")
    sample = commands.add_parser("sample-for-labels", help="write a CSV of a run's rows for a person to label")
    sample.add_argument("run_dir", type=Path)
    sample.add_argument("--n", type=int, default=200, help="rows to sample (default 200)")
    sample.add_argument("--stratify", choices=["verdict"], help="sample each judge verdict in proportion to its share")
    sample.add_argument("--show-verdict", action="store_true", help="include the judge's verdict (hidden by default)")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--out", type=Path, help="the CSV to write (default: RUN_DIR/labels-to-fill.csv)")
    compare = commands.add_parser("compare", help="two runs side by side, with a paired test on shared rows")
    compare.add_argument("run_a", type=Path)
    compare.add_argument("run_b", type=Path)
    compare.add_argument("--json", action="store_true", help="print the comparison as JSON")
    return parser


def _progress_style(args: argparse.Namespace) -> Style:
    if args.json_progress:
        return "json"
    return "plain" if args.quiet or not sys.stderr.isatty() else "live"


def _report(args: argparse.Namespace) -> int:
    from .report.document import write_report

    run_dir = RunDir(args.run_dir)
    if args.labels is not None:
        from .report.summary import refresh_metrics

        if not args.id_column or not (args.label_column or args.verdict_column):
            raise ConfigError("report --labels FILE needs --id-column and one of --label-column or --verdict-column")
        try:
            calibration = CalibrationConfig(path=args.labels, id_column=args.id_column, label_column=args.label_column,
                                            verdict_column=args.verdict_column)
        except ValidationError as exc:
            raise ConfigError(f"report --labels: {exc.errors()[0]['msg']}") from None
        trusted = refresh_metrics(run_dir, calibration)["trusted_labels"]
        print(f"trusted labels: {0 if trusted is None else trusted['labelled_n']} rows of {args.labels}")
    print(write_report(run_dir))  # a clear error when it is not a finished run
    return 0


def _sample_for_labels(args: argparse.Namespace) -> int:
    from .labelling import sample_for_labels

    path, rows = sample_for_labels(RunDir(args.run_dir), args.n, out=args.out, stratify=args.stratify,
                                   show_verdict=args.show_verdict, seed=args.seed)
    print(f"{rows} rows to label in {path}: fill its verdict column with correct or incorrect, then run\n"
          f"  python -m engine report {args.run_dir} --labels {path} --id-column id --verdict-column verdict")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from .report.compare import compare_runs, print_comparison

    comparison = compare_runs(args.run_a, args.run_b)
    if args.json:
        print(json.dumps(comparison, indent=2, default=str))
    else:
        print_comparison(comparison)
    return 0


def config_from_args(args: argparse.Namespace) -> TaskConfig:
    """CONFIG (the shipped example without one) with the flags applied."""
    return _with_flags(load_config(args.config or example_config("imdb")), args)


def _with_flags(config: TaskConfig, args: argparse.Namespace) -> TaskConfig:
    overrides = _judging_flags(args) | {
        "predict.mode": args.mode,
        "dataset.limit": args.limit,
        "predict.model": args.model,
        "local.latency_ms": args.sim_latency_ms,
        "endpoint.rpm": args.rpm,
        "endpoint.tpm": args.tpm,
    }
    return _with_settings(config, overrides, args)


def _judging_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The overrides of the flags ``run`` and ``judge`` share."""
    return {
        "judge.mode": args.mode,
        "endpoint.base_url": args.base_url,
        "endpoint.api_key_env": args.api_key_env,
        "judge.model": args.judge_model,
        "endpoint.concurrency": args.concurrency,
        "cache_dir": None if args.cache is None else str(args.cache.resolve()),
    }


def _with_settings(config: TaskConfig, overrides: dict[str, Any], args: argparse.Namespace) -> TaskConfig:
    """``config`` with the flags' ``overrides`` and every ``--set`` applied."""
    settings: dict[str, Any] = {}
    for key, table in args.set:  # merged first: two --set prices."m".… make one table
        merge_tables(settings, {key: table})
    return with_overrides(config, {**overrides, **settings})


def _evaluation(args: argparse.Namespace) -> Evaluation:
    """A new run, or ``--resume`` of one: its own config (or CONFIG) with the flags applied."""
    if not args.resume:
        if args.retry_failed:
            raise ConfigError("--retry-failed goes with --resume RUN_DIR")
        return Evaluation(config_from_args(args), run_dir=args.out, report=not args.no_report)
    if args.out is not None:
        raise ConfigError("--resume finishes the run in RUN_DIR: leave out --out")
    base = load_config(args.config) if args.config else RunDir(args.resume).config()
    return Evaluation(_with_flags(base, args), run_dir=args.resume, resume=True, retry_failed=args.retry_failed,
                      report=not args.no_report)


def _judging(args: argparse.Namespace) -> Evaluation:
    """A run judging the predictions of ``args.runs`` (one, or two with ``--pairwise``)."""
    if len(args.runs) != (2 if args.pairwise else 1):
        raise ConfigError("judge takes one RUN_DIR, or two with --pairwise (RUN_A RUN_B)")
    sources = Sources(tuple(args.runs))
    config = _with_settings(judging_config(sources, args.config), _judging_flags(args), args)
    return Evaluation(config, run_dir=args.out, sources=sources, report=not args.no_report)


def exit_status(metrics: dict[str, Any]) -> int:
    """0: every row judged or skipped; 1: no row judged; 3: some rows failed (see the module doc)."""
    if not metrics["n_judged"]:
        return 1
    return 3 if metrics["n_failed"] else 0


async def _run(args: argparse.Namespace) -> int:
    if args.dry_run:
        from .estimate import estimate

        print(json.dumps(estimate(config_from_args(args)), indent=2))
        return 0
    return await _evaluate(_evaluation(args), args)


async def _judge(args: argparse.Namespace) -> int:
    return await _evaluate(_judging(args), args)


async def _evaluate(evaluation: Evaluation, args: argparse.Namespace) -> int:
    """Run ``evaluation`` with progress, then print its summary; the exit status (module doc)."""
    from .progress import show_progress
    from .report.summary import print_summary

    try:
        async with evaluation, anyio.create_task_group() as group:
            args.started_run = evaluation
            print(f"run directory: {evaluation.run_dir}", file=sys.stderr)
            for note in evaluation.notes:
                print(f"note: {note}", file=sys.stderr)
            group.start_soon(partial(show_progress, evaluation, style=_progress_style(args)))
            async for _ in evaluation:
                pass
            group.cancel_scope.cancel()
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        started = getattr(args, "started_run", None) is evaluation or isinstance(exc, ProviderError)
        if started and RunDir(evaluation.run_dir).is_run:
            print(f"nothing done is lost: fix it, then resume with: python -m engine run --resume {evaluation.run_dir}",
                  file=sys.stderr)
        return 2
    assert evaluation.metrics is not None
    print_summary(evaluation.metrics, evaluation.run_dir)
    print(f"report  {RunDir(evaluation.run_dir).report_html}")
    return exit_status(evaluation.metrics)


def _interrupted(args: argparse.Namespace) -> str:
    """What to tell a user who interrupted a run: how to finish it, and what batches do meanwhile."""
    evaluation: Evaluation | None = getattr(args, "started_run", None)
    if evaluation is None:
        return "interrupted before the run started: nothing was sent"
    message = f"interrupted: what finished is in the journal; finish with: python -m engine run --resume {evaluation.run_dir}"
    if evaluation.config.uses_batch:
        message += (
            "\nbatches already submitted keep running at the provider (and are paid for); "
            "--resume re-attaches to them and collects their results"
        )
    return message


def _serve(args: argparse.Namespace) -> int:
    backend: LocalServerConfig | Upstream
    if args.backend == "upstream":
        if not args.upstream_url:
            raise ConfigError("serve --backend upstream needs --upstream-url URL")
        backend = Upstream(args.upstream_url, args.upstream_api_key_env)
    else:
        backend = LocalServerConfig(
            backend=args.backend,
            latency_ms=args.latency_ms,
            rpm=args.rpm,
            tpm=args.tpm,
            error_rate=args.error_rate,
            batch_min_seconds=args.batch_min_seconds,
            seed=args.seed,
            threads=args.threads,
        )
    server = serve(
        backend, host=args.host, port=args.port, api_key_env=args.api_key_env, data_dir=args.data_dir,
        on_ready=lambda url, described: print(f"serving {described} at {url}", flush=True),
    )
    anyio.run(lambda: server)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "report":
            return _report(args)
        if args.command == "compare":
            return _compare(args)
        if args.command == "sample-for-labels":
            return _sample_for_labels(args)
        if args.command == "judge":
            return anyio.run(_judge, args)
        return anyio.run(_run, args)
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.command in ("run", "judge"):
            print(_interrupted(args), file=sys.stderr)
        return 130
