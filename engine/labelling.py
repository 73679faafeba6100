"""Rows of a finished run for a person to label: ``python -m engine sample-for-labels RUN_DIR``.

The sample is drawn with a seed, so the same command gives the same rows. It is uniform over the
judged rows, or with ``stratify="verdict"`` proportional within each verdict (each keeps its
share, so both are represented and the sample stays representative: prediction-powered
inference needs the labelled rows to be a random sample of the rows). The CSV holds the row id,
the inputs, the prediction, the judge's verdict when ``show_verdict`` (hidden by default, so it
cannot sway the person), and an empty ``verdict`` column to fill with correct or incorrect;
``engine report RUN_DIR --labels FILE --id-column id --verdict-column verdict`` then uses it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import polars as pl

from .errors import ConfigError
from .rundir import RunDir

Stratify = Literal["verdict"] | None


def sample_for_labels(
    run_dir: RunDir, n: int, *, out: Path | None = None, stratify: Stratify = None, show_verdict: bool = False,
    seed: int = 0,
) -> tuple[Path, int]:
    """Write the sample's CSV (default ``RUN_DIR/labels-to-fill.csv``); returns it and its rows."""
    if n < 1:
        raise ConfigError(f"sample-for-labels: --n must be at least 1, got {n}")
    judged = run_dir.load().results.filter(pl.col("status") == "judged").collect()
    if judged.is_empty():
        raise ConfigError(f"{run_dir.path}: no judged row to label")
    if stratify == "verdict":
        groups = judged.partition_by("verdict", maintain_order=True)
        sizes = _proportional([group.height for group in groups], min(n, judged.height))
        sample = pl.concat([group.sample(n=size, seed=seed) for group, size in zip(groups, sizes, strict=True)])
    else:
        sample = judged.sample(n=min(n, judged.height), seed=seed)
    sample = sample.sort("index")
    inputs = sample["inputs"].struct.unnest() if sample["inputs"].dtype != pl.Null else pl.DataFrame()
    columns = [pl.Series("id", sample["row_id"]), *inputs.iter_columns(), pl.Series("prediction", sample["prediction"])]
    if show_verdict:
        columns.append(pl.Series("judge_verdict", sample["verdict"].replace_strict(
            {True: "correct", False: "incorrect"}, default=None, return_dtype=pl.String)))
    columns.append(pl.Series("verdict", [None] * sample.height, dtype=pl.String))
    target = out or run_dir.path / "labels-to-fill.csv"
    pl.DataFrame(columns).write_csv(target)
    return target, sample.height


def _proportional(heights: list[int], total: int) -> list[int]:
    """``total`` split over groups in proportion to their ``heights``, rounded so that the parts
    add up to it (the largest remainders get the rows left over)."""
    whole = sum(heights)
    exact = [total * height / whole for height in heights]
    sizes = [int(value) for value in exact]
    by_remainder = sorted(range(len(heights)), key=lambda index: exact[index] - sizes[index], reverse=True)
    for index in by_remainder[: total - sum(sizes)]:
        sizes[index] += 1
    return sizes
