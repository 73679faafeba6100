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
    with pytest.raises(ConfigError, match=r"label_column = 'genre' is not a column of .*data.csv \(columns: id, text, gold\)"):
        make(tmp_path, label_column="genre")


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


# --- unlabelled rows (issue 11 item 16) -------------------------------------------------------

EMPTY_LABELS = ["", "  ", ",,", " , "]  # an empty cell, blanks, separators only


def labels_of(path: Path, **options: Any) -> list[tuple[str, ...] | None]:
    dataset = Dataset(DatasetConfig(path=path, label_column="gold", **options), label_set=("X", "Y"))
    return [row.labels for row, _ in dataset.rows(("text",))]


@pytest.mark.parametrize("name", ["d.parquet", "d.jsonl"])
def test_an_empty_label_cell_is_no_ground_truth_in_parquet_and_ndjson(tmp_path: Path, name: str) -> None:
    frame = pl.DataFrame({"text": ["a", "b", "c", "d", "e", "f"], "gold": ["X, Y", *EMPTY_LABELS, None]})
    path = tmp_path / name
    frame.write_parquet(path) if name.endswith("parquet") else frame.write_ndjson(path)
    assert labels_of(path) == [("X", "Y"), None, None, None, None, None]


def test_an_empty_label_list_is_no_ground_truth_in_ndjson(tmp_path: Path) -> None:
    path = tmp_path / "lists.ndjson"
    path.write_text('{"text": "a", "gold": ["X", " Y "]}\n{"text": "b", "gold": []}\n{"text": "c", "gold": [""]}\n')
    assert labels_of(path) == [("X", "Y"), None, None]


def test_an_empty_label_cell_is_no_ground_truth_in_csv(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    # unquoted empty, quoted empty, separators only (quoted and not: one field either way), blanks
    path.write_text('text,gold\na,"X,Y"\nb,\nc,""\nd,",,"\ne," , "\nf,"  "\n', encoding="utf-8")
    assert labels_of(path) == [("X", "Y"), None, None, None, None, None]


# --- data errors name the file's line (issue 11 item 23) ------------------------------------


def csv_error(tmp_path: Path, text: str, **options: Any) -> str:
    with pytest.raises(ConfigError) as error:
        make(tmp_path, text, **options)
    message = str(error.value)
    assert "\n" not in message
    return message


def test_a_header_only_file_is_an_error(tmp_path: Path) -> None:
    assert csv_error(tmp_path, "id,text,gold\n").endswith("data.csv: the file has a header and no rows")
    empty = tmp_path / "empty.parquet"
    pl.DataFrame(schema={"text": pl.String}).write_parquet(empty)
    with pytest.raises(ConfigError, match=r"empty.parquet: the file has no rows$"):
        Dataset(DatasetConfig(path=empty))
    nothing = tmp_path / "nothing.jsonl"
    nothing.write_bytes(b"")
    with pytest.raises(ConfigError, match=r"nothing.jsonl: the file is empty$"):
        Dataset(DatasetConfig(path=nothing))


def test_a_csv_row_with_fewer_fields_names_its_line(tmp_path: Path) -> None:
    # line 3 holds a quoted field over two lines, so the short record starts on line 5
    text = 'id,text,gold\na,one,X\nb,"two\nlines",Y\nc,three\nd,four,X\n'
    message = csv_error(tmp_path, text, label_column="gold")
    assert message.endswith("data.csv: line 5 has 2 fields, the header 3: fill in the missing ones (an empty field is ,,)")


def test_a_csv_row_with_more_fields_names_its_line(tmp_path: Path) -> None:
    message = csv_error(tmp_path, "id,text\na,x\nb,y,z\n")
    assert message.endswith("data.csv: line 3 has 3 fields, the header 2: quote fields that contain the separator")


def test_a_blank_line_in_a_csv_is_an_error(tmp_path: Path) -> None:
    message = csv_error(tmp_path, "id,text\na,x\n\nb,y\n")
    assert message.endswith("data.csv: line 3 is empty, the header has 2 fields: remove the line")
    # one column: a blank line is an empty value, as polars reads it
    assert make(tmp_path, "text\nx\n\ny\n").n_rows == 3


def test_only_the_rows_a_selection_reads_are_checked(tmp_path: Path) -> None:
    assert make(tmp_path, "id,text\na,x\nb,y\nc\n", head=2).n_rows == 2
    csv_error(tmp_path, "id,text\na,x\nb,y\nc\n", tail=1)


def test_duplicate_header_names_name_the_column(tmp_path: Path) -> None:
    message = csv_error(tmp_path, "id,text,text\na,x,y\n")
    assert message.endswith("data.csv: line 1: column 'text' appears twice in the header: rename one")


def test_a_file_that_is_not_utf8_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes("text\nfine\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin.csv: line 3 is not valid UTF-8: save the file as UTF-8$"):
        Dataset(DatasetConfig(path=path))


def test_duplicate_ids_name_both_lines(tmp_path: Path) -> None:
    text = 'id,text\na,"x\ny"\nb,z\na,w\n'
    assert csv_error(tmp_path, text, id_column="id").endswith(
        "data.csv: line 5: id 'a' in dataset.id_column 'id' is not unique (first at line 2); "
        "choose a unique column or leave id_column unset"
    )


def test_an_empty_id_names_its_line(tmp_path: Path) -> None:
    assert csv_error(tmp_path, "id,text\na,x\n,y\n", id_column="id").endswith(
        "data.csv: line 3: the id in dataset.id_column 'id' is empty; give every row an id or leave id_column unset"
    )


def test_an_unknown_label_names_its_line(tmp_path: Path) -> None:
    assert csv_error(tmp_path, 'text,gold\n"x\n\nx",X\ny,Q\n', label_column="gold").endswith(
        "data.csv: line 5: label 'Q' in column 'gold' is not in the task's label set; "
        "add it to `labels` or fix label_separator"
    )


def test_ndjson_lines_count_blank_lines_and_parquet_rows_say_0_based(tmp_path: Path) -> None:
    path = tmp_path / "d.ndjson"
    path.write_text('{"id": "a", "text": "x"}\n\n{"id": "b", "text": "y"}\n{"id": "", "text": "z"}\n')
    with pytest.raises(ConfigError, match=r"d.ndjson: line 4: the id in dataset.id_column 'id' is empty"):
        Dataset(DatasetConfig(path=path, id_column="id"))
    pl.DataFrame({"id": ["a", "b", "a"]}).write_parquet(tmp_path / "d.parquet")
    repeated = r"d.parquet: row 2 \(0-based\): id 'a' .* is not unique \(first at row 0 \(0-based\)\)"
    with pytest.raises(ConfigError, match=repeated):
        Dataset(DatasetConfig(path=tmp_path / "d.parquet", id_column="id"))


def test_config_field_errors_name_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text(CSV)
    where = "task.toml: {}".format
    not_a_column = r"^task.toml: dataset.label_column = 'genre' is not a column of .*data.csv \(columns: id, text, gold\)$"
    with pytest.raises(ConfigError, match=not_a_column):
        Dataset(DatasetConfig(path=path, label_column="genre"), where=where)
    with pytest.raises(ConfigError, match=r"^task.toml: dataset.path: .*none.csv: data file not found$"):
        Dataset(DatasetConfig(path=tmp_path / "none.csv"), where=where)
