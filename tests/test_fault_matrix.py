"""Every fault of the matrix, realtime and batch: no row lost, none twice, journal and results agree."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.faults import Scenario, run_scenario, scenarios

SCENARIOS = {f"{scenario.mode}: {scenario.fault}": scenario for scenario in scenarios()}
RECOVERABLE = {"none", "500/502/503 at 10%", "connection resets at 5%", "bodies that are not JSON at 5%",
               "responses cut off mid-body at 5%", "choices: [] or content: null at 5% each",
               "a server that stops answering (timeouts) at 3%", "cancelled batch", "server restart between polls"}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
async def test_exact_accounting_under_faults(tmp_path: Path, name: str) -> None:
    scenario: Scenario = SCENARIOS[name]
    outcome = await run_scenario(scenario, tmp_path, rows=60)
    assert outcome.rows_judged + outcome.rows_failed == outcome.rows_in == 60
    assert outcome.duplicates == 0
    assert outcome.journal_agrees
    assert sum(outcome.failure_reasons.values()) == outcome.rows_failed  # every failure has its reason
    if scenario.fault in RECOVERABLE or "limit" in scenario.fault:
        assert outcome.rows_failed == 0, outcome.failure_reasons
    if "announced in headers" in scenario.fault:  # the client learns the limit: no storm
        assert outcome.rate_limited <= 0.05 * outcome.requests_sent
    if "never announced" in scenario.fault:  # it can only back off from 429s, and does
        assert outcome.rate_limited > 0
