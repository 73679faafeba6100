from __future__ import annotations

import gc
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from engine.config import DatasetConfig
from engine.dataset import STAGING_PREFIX, Dataset
from engine.errors import ConfigError

CSV = "id,text,gold\na,first,\"X, Y\"\nb,second,Y\nc,third,X\nd,fourth,Z\n"


def make(tmp_path: Path, text: str = CSV, **options: Any) -> Dataset:
    path = tmp_path / "data.csv"
    path.write_text(text, encoding="utf-8")
    return Dataset(DatasetConfig(path=path, **options), label_set=("X", "Y", "Z"))


def test_ids_labels_and_fields(tmp_path: Path) -> None:
    dataset = make(tmp_path, id_column="id", label_column="gold")
    rows = [row for row, _ in dataset.rows(("text",))]
    assert [row.row_id for row in rows] == ["a", "b", "c", "d"]
    assert rows[0].labels == ("X", "Y") and rows[0].fields == {"text": "first"}
    assert dataset.n_rows == 4


def test_position_is_the_default_id(tmp_path: Path) -> None:
    rows = [row for row, _ in make(tmp_path).rows(("text",))]
    assert [row.row_id for row in rows] == ["0", "1", "2", "3"] and rows[0].labels is None


@pytest.mark.parametrize(
    ("options", "expected"),
    [({"head": 2}, ["0", "1"]), ({"tail": 2}, ["2", "3"]), ({"tail": 3, "limit": 1}, ["1"])],
)
def test_selection(tmp_path: Path, options: dict[str, int], expected: list[str]) -> None:
    assert [row.row_id for row, _ in make(tmp_path, CSV, **options).rows(())] == expected


def test_sample_is_seeded_and_keeps_file_order(tmp_path: Path) -> None:
    first = [row.row_id for row, _ in make(tmp_path, sample=2, seed=3).rows(())]
    again = [row.row_id for row, _ in make(tmp_path, sample=2, seed=3).rows(())]
    assert first == again and first == sorted(first) and len(first) == 2


def test_exclude_and_attach(tmp_path: Path) -> None:
    dataset = make(tmp_path, id_column="id")
    done = pl.LazyFrame({"row_id": ["b"]})
    journal = pl.LazyFrame({"custom_id": ["predict:c"], "row_id": ["c"], "content": ["X"]})
    owed = list(dataset.rows(("text",), exclude=done, attach={"predict": journal}))
    assert [row.row_id for row, _ in owed] == ["a", "c", "d"]
    assert owed[1][1]["predict"] == {"custom_id": "predict:c", "content": "X"}
    assert owed[0][1]["predict"] is None


def test_parquet_and_ndjson(tmp_path: Path) -> None:
    frame = pl.DataFrame({"text": ["x", "y"], "gold": ["X", "Y"]})
    frame.write_parquet(tmp_path / "d.parquet")
    frame.write_ndjson(tmp_path / "d.jsonl")
    for name in ("d.parquet", "d.jsonl"):
        dataset = Dataset(DatasetConfig(path=tmp_path / name, label_column="gold"), label_set=("X", "Y"))
        assert [row.labels for row, _ in dataset.rows(("text",))] == [("X",), ("Y",)]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="data file not found"):
        Dataset(DatasetConfig(path=tmp_path / "none.csv"))


def test_unknown_column_lists_the_columns(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"label_column = 'genre' is not a column \(columns: id, text, gold\)"):
        make(tmp_path, label_column="genre")


def test_duplicate_ids_name_the_row(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"row 1: id 'a' .* is not unique"):
        make(tmp_path, text="id,text\na,x\na,y\n", id_column="id")


def test_unknown_label_names_row_and_label(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"row 1: label 'Q' in column 'gold' is not in the task's label set"):
        make(tmp_path, text="text,gold\nx,X\ny,Q\n", label_column="gold")


def test_non_utf8_and_ragged_csv_are_config_errors(tmp_path: Path) -> None:
    (tmp_path / "latin.csv").write_bytes("text\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="latin.csv: cannot read"):
        Dataset(DatasetConfig(path=tmp_path / "latin.csv"))
    (tmp_path / "ragged.csv").write_text("a,b\n1,2\n3,4,5\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="ragged.csv: cannot read"):
        Dataset(DatasetConfig(path=tmp_path / "ragged.csv"))


def test_staged_copies_of_dead_processes_are_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = tmp_path / f"{STAGING_PREFIX}{dead.stdout.strip()}-abc"
    orphan.mkdir()
    (orphan / "rows.parquet").write_bytes(b"left by a SIGKILL")
    data = tmp_path / "data.csv"
    data.write_text("text\nhello\n")
    dataset = Dataset(DatasetConfig(path=data))
    assert not orphan.exists()
    mine = list(tmp_path.glob(f"{STAGING_PREFIX}{os.getpid()}-*"))
    assert len(mine) == 1
    del dataset
    gc.collect()
    assert not mine[0].exists()
