"""``Parked``: the on-disk mapping rows wait in while their batches run."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.run.parked import Parked
from engine.types import ChatResult, Failure, Row, TokenLogprob, Usage


def test_values_come_back_as_they_went_in_and_leave_when_taken(tmp_path: Path) -> None:
    parked: Parked[Row] = Parked(tmp_path / "scratch" / "predict.sqlite")
    rows = {f"predict:{i}": Row(str(i), i, {"text": f"text <{i}> é"}, ("a", "b"), f"{i:016x}") for i in range(1200)}
    parked.put_many(rows.items())
    parked["extra"] = Row("x", -1, {})
    assert len(parked) == 1201 and parked["predict:7"] == rows["predict:7"] and parked.get("nothing") is None
    taken = parked.take([*rows, "never parked"])  # more keys than one statement takes
    assert taken == rows and len(parked) == 1
    assert parked.pop("extra") == Row("x", -1, {}) and parked.pop("extra", None) is None
    with pytest.raises(KeyError):
        parked.pop("extra")
    with pytest.raises(KeyError):
        del parked["extra"]
    parked.close()
    assert not (tmp_path / "scratch").exists()


def test_a_file_left_by_a_killed_session_is_started_afresh(tmp_path: Path) -> None:
    path = tmp_path / "judge.sqlite"
    left: Parked[int] = Parked(path)
    left["judge:1"] = 1
    left._db.close()  # killed: never closed
    parked: Parked[int] = Parked(path)
    assert len(parked) == 0 and list(parked) == []
    parked.close()


def test_a_prediction_waiting_for_its_verdicts_comes_back_whole(tmp_path: Path) -> None:
    """The engine's own records are pickled by their fields (``_by_fields``): every field, in order."""
    row = Row("7", 7, {"text": "a"}, None, "00ff")
    prediction = ChatResult("predict:7", "Drama", "small", Usage(3, 4, cached_tokens=2), None, attempts=2,
                            logprobs=(TokenLogprob("Dr", -0.1, (("Co", -2.5),)),))
    failure = Failure("judge:7", "http_503", "unavailable", status_code=503, attempts=3)
    parked: Parked[tuple[Row, ChatResult, dict[str, Failure]]] = Parked(tmp_path / "join.sqlite")
    parked["7"] = (row, prediction, {"judge": failure})
    assert parked.pop("7") == (row, prediction, {"judge": failure})
    parked.close()
