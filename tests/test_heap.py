"""The heap a run starts with is frozen while it runs (``engine.run.heap``), and only then."""

from __future__ import annotations

import gc
from pathlib import Path

from benchmarks.clocks import InstantClock
from engine import Evaluation, MockProvider
from engine.run.heap import frozen_heap

from .conftest import imdb_config


def test_the_heap_is_frozen_until_the_last_of_two_runs_leaves() -> None:
    assert gc.get_freeze_count() == 0
    with frozen_heap():
        first = gc.get_freeze_count()
        assert first > 0
        with frozen_heap():
            created_meanwhile = [object() for _ in range(3)]
            assert gc.get_freeze_count() >= first
        assert gc.get_freeze_count() > 0  # the first run is still on
        del created_meanwhile
    assert gc.get_freeze_count() == 0


async def test_a_run_freezes_the_heap_it_starts_with_and_gives_it_back(tmp_path: Path) -> None:
    assert gc.get_freeze_count() == 0
    async with Evaluation(imdb_config(None, limit=5), run_dir=tmp_path / "run", provider=MockProvider(lambda _: "Drama"),
                          clock=InstantClock()) as evaluation:
        assert gc.get_freeze_count() > 0
        rows = [row async for row in evaluation]
    assert len(rows) == 5 and gc.get_freeze_count() == 0
