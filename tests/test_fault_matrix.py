"""Every fault of the matrix, realtime and batch: no row lost, none twice, none paid twice, the
journal and the server's own count agree with the results."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.faults import Scenario, run_scenario, scenarios

SCENARIOS = {f"{scenario.api} {scenario.mode}: {scenario.fault}": scenario for scenario in scenarios()}
# Faults that cost rows by design: a row whose every try failed, a line refused for good.
UNRECOVERABLE = {"every line fails (completed, no output file)", "expired with partial output",
                 "stuck in validating", "whole file fails validation", "failed lines at 20%"}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
async def test_exact_accounting_under_faults(tmp_path: Path, name: str) -> None:
    scenario: Scenario = SCENARIOS[name]
    outcome = await run_scenario(scenario, tmp_path, rows=60)
    assert outcome.rows_judged + outcome.rows_failed == outcome.rows_in == 60
    assert outcome.duplicates == 0
    assert outcome.journal_agrees
    assert outcome.paid_twice == 0
    assert sum(outcome.failure_reasons.values()) == outcome.rows_failed  # every failure has its reason
    if scenario.fault not in UNRECOVERABLE:
        assert outcome.rows_failed == 0, outcome.failure_reasons
    # Every request the server saw is a row's (or the batch preflight's), and reached it at most
    # 1 + its retries times: nothing was paid for that the journal does not account for.
    assert outcome.unattributed == 0
    assert outcome.within_retries
    if scenario.mode == "batch":
        # One batch per request file, retry batches too (each writes a file of its own): a batch
        # created twice for one file shows here, and so would one never created.
        assert outcome.batches_needed >= 2  # a predict batch and a judge batch at least
        assert outcome.batches_created == outcome.batches_needed
    else:
        assert outcome.batches_created == outcome.batches_needed == 0
    assert all(outcome.checks.values()), outcome.checks
    if "announced in headers" in scenario.fault:  # the client learns the limit: no storm
        assert outcome.rate_limited <= 0.05 * outcome.requests_sent
    if "never announced" in scenario.fault:  # it can only back off from 429s, and does
        assert outcome.rate_limited > 0
    if "trickling" in scenario.fault:  # both trickled calls timed out and were sent again
        assert outcome.retries >= 2 and outcome.max_requests_per_row >= 3
    if "one-slot" in scenario.fault:  # the window keeps the queue short of the timeout: few retries, if any
        assert outcome.retries <= 3, outcome.retries
