"""The judge object: its request, its parsing, its prefix, and a second kind through the same seam."""

from __future__ import annotations

from typing import ClassVar

import polars as pl
import pytest

from engine import ConfigError, load_config, with_overrides
from engine.config import JudgeConfig, TaskConfig
from engine.judges import VerdictJudge, judges_for
from engine.prompts import PromptBuilder
from engine.run.pipeline import JoinState
from engine.shipped import example_config
from engine.types import ChatResult, Row, Usage

COLUMNS = ["Overview", "Genre", "Series_Title"]
ROW = Row("7", 7, {"Overview": "A heist {goes} wrong.", "Genre": "Crime", "Series_Title": "Heat"}, ("Crime",))


def task(**overrides: object) -> TaskConfig:
    return with_overrides(load_config(example_config("imdb")), dict(overrides))


def panel(*names: str, **changes: dict[str, object]) -> TaskConfig:
    """The IMDB task judged by a panel named ``names``; ``changes`` by judge name."""
    data = task().model_dump()
    judge = data.pop("judge")
    data["judge"] = [{**judge, "name": name, **changes.get(name, {})} for name in names]
    return TaskConfig.model_validate(data)


def test_a_verdict_judge_asks_about_the_row_and_the_prediction_verbatim() -> None:
    config = task(**{"judge.user_template": "Movie: {Overview}\nOptions: {labels}\nAnswer: {prediction}"})
    (judge,) = judges_for(config, COLUMNS)
    messages = judge.messages(ROW, "Drama {x}")
    assert messages[-1] == {
        "role": "user",
        "content": f"Movie: A heist {{goes}} wrong.\nOptions: {', '.join(config.labels)}\nAnswer: Drama {{x}}",
    }
    assert messages[0]["role"] == "system" and judge.prefix == "judge" and judge.fields == ("Overview",)


def test_its_choices_are_its_verdict_words_only_when_constrained() -> None:
    (free,) = judges_for(task(**{"judge.constrain": False}), COLUMNS)
    (constrained,) = judges_for(task(**{"judge.constrain": True, "judge.verdicts.correct": ["yes"]}), COLUMNS)
    assert free.choices is None
    assert constrained.choices == ("yes", "incorrect")


@pytest.mark.parametrize(
    ("answer", "verdict"),
    [("correct", True), (" 'Correct.' ", True), ("INCORRECT", False), ("correct...", None), ("maybe", None)],
)
def test_its_reply_becomes_a_verdict_or_none(answer: str, verdict: bool | None) -> None:
    (judge,) = judges_for(task(), COLUMNS)
    assert judge.verdict(answer) is verdict


def test_a_panel_has_one_judge_per_table_each_with_its_own_prefix() -> None:
    judges = judges_for(panel("a", "b"), COLUMNS)
    assert [judge.prefix for judge in judges] == ["judge.a", "judge.b"]
    assert [request.custom_id for request in (PromptBuilder(panel("a", "b"), COLUMNS).judge(ROW, "x", i) for i in (0, 1))] == [
        "judge.a:7", "judge.b:7",
    ]


def test_a_judge_template_naming_no_column_is_refused_naming_the_judge() -> None:
    with pytest.raises(ConfigError, match=r"judge b: user_template: placeholder \{Plot\}"):
        judges_for(panel("a", "b", b={"user_template": "{Plot}"}), COLUMNS)


class LastLineJudge:
    """A test-only kind: the verdict is the reply's last ``VERDICT:`` line (what a reasoning
    judge will do), and only ``pass`` is correct."""

    COLUMNS: ClassVar[dict[str, pl.DataType]] = VerdictJudge.COLUMNS

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.config = JudgeConfig(model="j", user_template="{prediction}")

    @property
    def fields(self) -> tuple[str, ...]:
        return ()

    @property
    def choices(self) -> tuple[str, ...] | None:
        return None

    def messages(self, row: Row, prediction: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": f"Reason, then end with VERDICT: pass or fail. {prediction}"}]

    def verdict(self, answer: str) -> bool | None:
        lines = [line for line in answer.splitlines() if line.startswith("VERDICT:")]
        return None if not lines else lines[-1].removeprefix("VERDICT:").strip() == "pass"


def test_another_kind_of_judge_joins_through_the_same_seam() -> None:
    verdict_judge = judges_for(panel("words", "other"), COLUMNS)[0]
    join = JoinState(("Crime", "Drama"), (verdict_judge, LastLineJudge("judge.lines")))
    assert join.prediction(ROW, ChatResult("predict:7", "Crime", "m", Usage(1, 1), 0.1)) is None
    assert join.verdict("7", ChatResult("judge.lines:7", "VERDICT: fail\nno, wait.\nVERDICT: pass", "m", Usage(), 0.1)) is None
    joined = join.verdict("7", ChatResult("judge.words:7", "correct", "m", Usage(), 0.1))
    assert joined is not None and joined.verdicts == (True, True) and joined.verdict is True
