"""A run's fixed cost: the client CPU of a 1,000-row run that is not its requests, phase by phase.

Each run is ``python -m engine run --limit 1000 --base-url URL`` (the shipped IMDB example, both
stages realtime, against a sim server in another process; ``--provider anthropic`` sends them
through the Anthropic adapter instead) in a fresh child process, which marks its phases with
``time.process_time`` (this process's user+system CPU, its threads included; the server's is not
counted):

python
    the interpreter starting, up to the first line of the child (no engine module loaded yet;
    the child's own module imports only the standard library)
imports
    ``import engine.cli``: everything ``python -m engine run`` imports before it parses its flags
adapter
    importing the adapter of the run's provider (``adapters.openai``: the ``openai`` SDK and
    aiohttp), which the run would otherwise import as it connects
config
    parsing the flags and loading the task's config, up to ``Evaluation(...)``
start-up
    from ``Evaluation(...)`` to the first request leaving (the first ``Provider.complete``):
    data set, run directory, the provider and its SDK client, the pipeline's first row; two
    of its parts are also shown alone, ``provider`` (``engine.connect.provider_for``) and
    ``data set`` (``Dataset``: reading, checking and staging the data file)
requests
    from the first request to ``results.parquet`` written (``ResultsWriter.finalize``)
end
    from ``results.parquet`` written to the command's return: ``metrics.json``, the report
    (unless ``--no-report``), the summary printed

The phases are marked by wrapping, in the child, ``Evaluation.__init__``, the ``complete`` of the
provider ``engine.connect.provider_for`` makes, and ``ResultsWriter.finalize``; the engine has no
hooks for it. A first run, not counted, fills the children's bytecode cache; each phase's figure
is then its best of ``--repeat`` runs (noise only ever adds time).
Issue 16's fixed cost is start-up + end: target under 0.3 s of CPU with the report.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial, wraps
from itertools import pairwise
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from .server import sim_server_process

RESULTS = Path(__file__).parent / "results"
PHASES = ("python", "imports", "adapter", "config", "start-up", "requests", "end")
#: Parts of start-up shown on their own: constructing the providers (``engine.connect.provider_for``:
#: the SDK's client), and reading and checking the data file (``Dataset``).
START_UP_PARTS = ("provider", "data set")


def _child(marks_path: str, provider: str, *run_args: str) -> None:
    """The measured process: ``python -m engine run RUN_ARGS`` with its phases marked, the marks
    (CPU seconds since the process started) and the parts of start-up written to ``marks_path``
    as JSON; ``provider`` is the adapter the run uses."""
    marks = {"python": time.process_time()}
    import engine.cli  # the import measured: nothing of the engine is loaded before this line

    marks["imports"] = time.process_time()
    importlib.import_module(f"adapters.{provider}")
    marks["adapter"] = time.process_time()
    parts = _mark_phases(marks)
    status = engine.cli.main(["run", *run_args])
    marks["end"] = time.process_time()
    Path(marks_path).write_text(json.dumps({"status": status, "marks": marks, "parts": parts}))


def _mark_phases(marks: dict[str, float]) -> dict[str, float]:
    """Wrap the engine's methods where the phases change (each mark is set once, the first
    time); returns the CPU seconds of the parts of start-up, filled in as the run goes."""
    import engine.connect
    from engine.dataset import Dataset
    from engine.evaluation import Evaluation
    from engine.provider import Provider
    from engine.results import ResultsWriter

    parts = dict.fromkeys(START_UP_PARTS, 0.0)

    def mark_before(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(method)
        def marked(*args: Any, **kwargs: Any) -> Any:
            marks.setdefault(name, time.process_time())
            return method(*args, **kwargs)

        return marked

    def mark_after(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(method)
        def marked(*args: Any, **kwargs: Any) -> Any:
            result = method(*args, **kwargs)
            marks.setdefault(name, time.process_time())
            return result

        return marked

    def timed(part: str, method: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(method)
        def measured(*args: Any, **kwargs: Any) -> Any:
            started = time.process_time()
            try:
                return method(*args, **kwargs)
            finally:
                parts[part] += time.process_time() - started

        return measured

    provider_for = timed("provider", engine.connect.provider_for)

    def marked_provider(*args: Any, **kwargs: Any) -> Provider:
        provider: Provider = provider_for(*args, **kwargs)
        provider.complete = mark_before("start-up", provider.complete)  # type: ignore[method-assign]
        return provider

    Evaluation.__init__ = mark_before("config", Evaluation.__init__)  # type: ignore[method-assign]
    Dataset.__init__ = timed("data set", Dataset.__init__)  # type: ignore[method-assign]
    ResultsWriter.finalize = mark_after("requests", ResultsWriter.finalize)  # type: ignore[method-assign]
    engine.connect.provider_for = marked_provider
    return parts


def measure(base_url: str, workdir: Path, rows: int, *, provider: str, report: bool) -> dict[str, float]:
    """One run in a fresh child process: the CPU seconds of each phase and part of start-up.
    The child writes its bytecode to ``workdir``, whatever ``PYTHONDONTWRITEBYTECODE`` says: an
    installed engine imports from cached bytecode, and so does every run after the first."""
    environment = {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}
    marks_path = workdir / "marks.json"
    run_dir = workdir / f"run-{time.monotonic_ns()}"
    command = [sys.executable, "-m", "benchmarks.fixed_cost", str(marks_path), provider, "--limit", str(rows),
               "--base-url", base_url, "--set", f"endpoint.provider={provider}", "--out", str(run_dir), "--quiet"]
    if not report:
        command.append("--no-report")
    subprocess.run(command, capture_output=True, text=True, check=True,
                   env={**environment, "PYTHONPYCACHEPREFIX": str(workdir / "bytecode")})
    measured = json.loads(marks_path.read_text())
    if measured["status"] != 0:
        raise RuntimeError(f"the run ended with status {measured['status']}: {run_dir}")
    marks = measured["marks"]
    ends = [0.0, *(marks[phase] for phase in PHASES)]
    phases = {phase: end - start for phase, (start, end) in zip(PHASES, pairwise(ends), strict=True)}
    return {**phases, **{f"start-up: {part}": seconds for part, seconds in measured["parts"].items()}}


def best(runs: list[dict[str, float]]) -> dict[str, float]:
    """Each figure's least CPU over ``runs``, and start-up + end (the issue's figure) of those."""
    phases = {name: min(run[name] for run in runs) for name in runs[0]}
    return {**phases, "start-up + end": phases["start-up"] + phases["end"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks fixed-cost", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1000, help="rows of the IMDB example (it has 1,000)")
    parser.add_argument("--provider", choices=("openai", "anthropic"), default="openai", help="the run's adapter")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each kind; each phase's best is shown")
    args = parser.parse_args(argv)
    kinds = {"with report": True, "report=False": False}
    with TemporaryDirectory() as tmp, sim_server_process() as server:
        run = partial(measure, server.url, Path(tmp), args.rows, provider=args.provider)
        run(report=True)  # not counted: it compiles the bytecode
        runs = {kind: [run(report=report) for _ in range(args.repeat)] for kind, report in kinds.items()}
    figures = {kind: best(measured) for kind, measured in runs.items()}
    columns = [*PHASES, *(f"start-up: {part}" for part in START_UP_PARTS), "start-up + end"]
    print(f"CPU seconds of a {args.rows}-row run (python -m engine run, IMDB example, {args.provider} adapter, "
          f"sim server in another process), best of {args.repeat}")
    print(f"{'':14}" + "".join(f"{column:>{max(9, len(column)) + 1}}" for column in columns))
    for kind, figure in figures.items():
        print(f"{kind:14}" + "".join(f"{figure[column]:{max(9, len(column)) + 1}.3f}" for column in columns))
    print("target: start-up + end < 0.3 s with the report (issue 16)")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / ("fixed-cost.json" if args.provider == "openai" else f"fixed-cost-{args.provider}.json")
    out.write_text(json.dumps({"settings": vars(args), "best": figures, "runs": runs}, indent=2) + "\n")
    print(f"written {out}")


if __name__ == "__main__":
    _child(*sys.argv[1:])
