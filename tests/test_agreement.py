"""Krippendorff's alpha of a panel, checked against the ``krippendorff`` package (an independent
implementation): nominal for verdicts, ordinal for scores, with missing votes."""

from __future__ import annotations

import json
from pathlib import Path

import krippendorff
import numpy as np
import polars as pl
import pytest

from benchmarks.clocks import InstantClock
from engine import Evaluation, TaskConfig
from engine.mock_provider import MockProvider
from engine.report.judgements import krippendorff_alpha
from engine.types import ChatRequest

from .conftest import imdb_config


@pytest.mark.parametrize(("ordinal", "seed", "missing"), [(False, 0, 0.0), (False, 1, 0.3), (True, 2, 0.0), (True, 3, 0.25)])
def test_alpha_equals_the_krippendorff_packages(ordinal: bool, seed: int, missing: float) -> None:
    rng = np.random.default_rng(seed)
    data = rng.integers(1, 6, size=(4, 300)).astype(float)
    data[1] = np.where(rng.random(300) < 0.7, data[0], data[1])  # some agreement
    data[rng.random(data.shape) < missing] = np.nan
    frame = pl.DataFrame({"scores": [[None if np.isnan(v) else float(v) for v in data[:, row]] for row in range(300)]})
    ours, units = krippendorff_alpha(frame, "scores", ordinal=ordinal)
    expected = krippendorff.alpha(reliability_data=data, level_of_measurement="ordinal" if ordinal else "nominal")
    assert ours == pytest.approx(expected, abs=1e-12)
    assert units == int(((~np.isnan(data)).sum(axis=0) >= 2).sum())


def test_alpha_is_undefined_with_one_value_or_no_pair() -> None:
    assert krippendorff_alpha(pl.DataFrame({"v": [[1.0, 1.0], [1.0, 1.0]]}), "v", ordinal=False) == (None, 2)
    assert krippendorff_alpha(pl.DataFrame({"v": [[1.0, None], [None, 0.0]]}), "v", ordinal=False) == (None, 0)


async def test_a_panels_metrics_carry_alpha_beside_fleiss_kappa(tmp_path: Path) -> None:
    def three_judges(request: ChatRequest) -> str:
        if request.stage == "predict":
            return "Drama"
        row, judge = int(request.row_id), request.custom_id.split(":")[0]
        if judge == "judge.c" and row % 5 == 0:
            return "no idea"  # a missing vote
        return "correct" if (row + {"judge.a": 0, "judge.b": 0, "judge.c": 1}[judge]) % 3 else "incorrect"

    data = imdb_config(None, limit=40).model_dump()
    judge = data.pop("judge")
    data["judge"] = [{**judge, "name": name, "constrain": False} for name in ("a", "b", "c")]
    async with Evaluation(TaskConfig.model_validate(data), run_dir=tmp_path / "panel", provider=MockProvider(three_judges),
                          clock=InstantClock()):
        pass
    panel = json.loads((tmp_path / "panel" / "metrics.json").read_text())["panel"]
    votes = pl.read_parquet(tmp_path / "panel" / "results.parquet")["verdicts"].to_list()
    reliability = np.array([[np.nan if vote is None else float(vote) for vote in row] for row in votes]).T
    assert panel["krippendorff_alpha"] == pytest.approx(
        krippendorff.alpha(reliability_data=reliability, level_of_measurement="nominal"), abs=1e-12)
    assert panel["krippendorff_alpha_n"] == 40 and panel["fleiss_kappa_n"] == 32
    assert "Krippendorff's alpha" in (tmp_path / "panel" / "report.md").read_text()
