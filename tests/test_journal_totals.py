"""``JournalTotals``: the end-of-run sums, gathered as calls are journaled, equal those read back
from the files, and both equal plain Python sums over the journal's lines."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from engine.journal import Journal
from engine.journal_totals import TOTALS_COLUMNS, JournalTotals, read_totals
from engine.rundir import RunDir
from engine.types import ChatResult, Failure, Outcome, Row, StageName, Usage

CALLERS: tuple[tuple[StageName, str], ...] = (("predict", "predict"), ("judge", "judge"), ("judge", "judge@1"),
                                              ("judge", "judge.strict"))


def outcomes(count: int, seed: int) -> list[tuple[StageName, Row, Outcome]]:
    """Answers in batches (no latency) and realtime, failures, retries, 429s, cache hits."""
    draw = random.Random(seed)
    made: list[tuple[StageName, Row, Outcome]] = []
    for i in range(count):
        stage, prefix = draw.choice(CALLERS)
        row = Row(str(i), i, {"text": "t"}, None, "f")
        custom_id = f"{prefix}:{i}"
        started = 1000.0 + draw.random() * 100
        timing: dict[str, Any] = {"attempts": draw.choice((1, 1, 2, 3)), "started_at": started,
                                  "finished_at": started + draw.random(), "rate_limited": draw.choice((0, 0, 1))}
        if draw.random() < 0.15:
            made.append((stage, row, Failure(custom_id, "http_500", "boom", status_code=500, **timing)))
            continue
        usage = Usage(draw.randint(1, 900), draw.randint(1, 50), draw.choice((0, 64)), draw.choice((0, 0, 128)))
        cached = draw.random() < 0.05
        made.append((stage, row, ChatResult(
            custom_id, "yes", draw.choice(("m1", "m2")), usage, None if draw.random() < 0.5 else 0.2,
            cached=cached, **{**timing, "attempts": 0 if cached else timing["attempts"]},
        )))
    return made


def journaled(run_dir: RunDir, records: list[tuple[StageName, Row, Outcome]], totals: JournalTotals) -> Journal:
    journal = Journal(run_dir, fold=totals.add, columns=TOTALS_COLUMNS)
    for stage, row, outcome in records:
        journal.append(stage, row, outcome)
    journal.fold_rest()
    journal.close()
    return journal


def figures(totals: JournalTotals) -> dict[str, Any]:
    return {
        "tokens": totals.tokens_by_caller(),
        "calls": {name: (caller.requests, caller.rate_limited) for name, caller in totals.callers.items()},
        "retries": totals.retries,
        "cache_hits": totals.cache_hits,
        "overlap": totals.stage_overlap(),
    }


def by_hand(run_dir: RunDir) -> dict[str, Any]:
    """The same figures from the journal's lines with plain Python."""
    tokens: dict[str, dict[str, Any]] = {}
    calls: dict[str, tuple[int, int]] = {}
    retries = 0
    hits = {"predict": 0, "judge": 0}
    last_prediction = max(json.loads(line)["finished_at"] for line in run_dir.journal("predict").read_text().splitlines())
    judge_starts = []
    for stage in ("predict", "judge"):
        for line in run_dir.journal(stage).read_text().splitlines():
            record = json.loads(line)
            caller = record["custom_id"].split(":")[0].split("@")[0]
            attempts = 1 if record["attempts"] is None else record["attempts"]
            requests, limited = calls.get(caller, (0, 0))
            calls[caller] = (requests + attempts, limited + record["rate_limited"])
            retries += max(0, attempts - 1)
            hits[stage] += bool(record.get("cached"))
            if stage == "judge":
                judge_starts.append(record["started_at"])
            if not record["ok"]:
                continue
            used = tokens.setdefault(caller, {"prompt": 0, "completion": 0, "batch_prompt": 0, "batch_completion": 0,
                                              "cached": 0, "cache_write": 0, "batch_cached": 0, "batch_cache_write": 0,
                                              "served": set()})
            in_batch = record["latency_s"] is None
            for kind, field in (("prompt", "prompt_tokens"), ("completion", "completion_tokens"),
                                ("cached", "cached_tokens"), ("cache_write", "cache_write_tokens")):
                used[kind] += record.get(field, 0)
                used[f"batch_{kind}"] += record.get(field, 0) if in_batch else 0
            used["served"].add(record["model"])
    early = sum(1 for start in judge_starts if start < last_prediction)
    return {
        "tokens": {caller: {**used, "served": sorted(used["served"])} for caller, used in tokens.items()},
        "calls": calls,
        "retries": retries,
        "cache_hits": hits,
        "overlap": {"judge_calls": len(judge_starts), "judge_started_before_last_prediction": early,
                    "share": early / len(judge_starts)},
    }


def test_totals_gathered_while_journaling_equal_the_files_read_back_and_plain_sums(tmp_path: Path) -> None:
    run_dir = RunDir(tmp_path)
    live = JournalTotals()
    journaled(run_dir, outcomes(5_000, seed=1), live)  # more than a block of records per stage
    assert figures(live) == figures(read_totals(run_dir)) == by_hand(run_dir)


def test_a_resumed_session_adds_what_earlier_sessions_wrote_once(tmp_path: Path) -> None:
    run_dir = RunDir(tmp_path)
    journaled(run_dir, outcomes(1_500, seed=2), JournalTotals())
    with (tmp_path / "journal" / "judge.ndjson").open("a") as judge:
        judge.write('{"custom_id": "judge:torn", "ok": tr')  # a kill mid-line: cut when the journal reopens
    resumed = JournalTotals()
    journal = journaled(run_dir, outcomes(1_200, seed=3), resumed)
    read_totals(run_dir, into=resumed, upto=journal.earlier_bytes)
    assert figures(resumed) == figures(read_totals(run_dir)) == by_hand(run_dir)
