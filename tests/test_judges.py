"""The judge object: its request, its parsing, its prefix, and a second kind through the same seam."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine import ConfigError, load_config, with_overrides
from engine.config import JudgeConfig, TaskConfig, parse_config
from engine.judges import judges_for
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
    assert free.response_format is None
    assert constrained.response_format is not None
    assert constrained.response_format["json_schema"]["schema"]["properties"]["answer"]["enum"] == ["yes", "incorrect"]


@pytest.mark.parametrize(
    ("answer", "verdict"),
    [("correct", True), (" 'Correct.' ", True), ("INCORRECT", False), ("correct...", None), ("maybe", None)],
)
def test_its_reply_becomes_a_verdict_or_none(answer: str, verdict: bool | None) -> None:
    (judge,) = judges_for(task(), COLUMNS)
    assert judge.read(answer).verdict is verdict


def test_a_panel_has_one_judge_per_table_each_with_its_own_prefix() -> None:
    judges = judges_for(panel("a", "b"), COLUMNS)
    assert [judge.prefix for judge in judges] == ["judge.a", "judge.b"]
    assert [request.custom_id for request in (PromptBuilder(panel("a", "b"), COLUMNS).judge(ROW, "x", i) for i in (0, 1))] == [
        "judge.a:7", "judge.b:7",
    ]


def test_a_judge_template_naming_no_column_is_refused_naming_the_judge() -> None:
    with pytest.raises(ConfigError, match=r"judge b: user_template: placeholder \{Plot\}"):
        judges_for(panel("a", "b", b={"user_template": "{Plot}"}), COLUMNS)


def test_a_reasoning_judge_is_decided_by_its_last_verdict_line_and_keeps_its_reasoning() -> None:
    config = task(**{"judge.reasoning": True, "judge.max_tokens": 512, "judge.constrain": False})
    (judge,) = judges_for(config, COLUMNS)
    content = judge.messages(ROW, "Crime")[-1]["content"]
    assert content.endswith(
        "First reason step by step. End your reply with a final line of the form `VERDICT: <verdict>`, "
        "where <verdict> is one of: correct, incorrect."
    )
    reply = "The film is a heist.\nVERDICT: incorrect would be wrong here.\nSo it fits.\n**VERDICT:** Correct."
    reading = judge.read(reply)
    assert reading.verdict is True and reading.answer == "Correct."
    assert reading.reasoning == "The film is a heist.\nVERDICT: incorrect would be wrong here.\nSo it fits."
    # Quoting the verdict words in the reasoning without a final line decides nothing.
    assert judge.read("It is correct, not incorrect.").verdict is None


def test_a_constrained_reasoning_judge_asks_for_reasoning_first_then_the_verdict() -> None:
    (judge,) = judges_for(task(**{"judge.reasoning": True, "judge.constrain": True, "judge.max_tokens": 300}), COLUMNS)
    assert judge.response_format is not None
    schema = judge.response_format["json_schema"]["schema"]
    assert list(schema["properties"]) == ["reasoning", "verdict"]
    assert schema["properties"]["verdict"]["enum"] == ["correct", "incorrect"]
    reading = judge.read('{"reasoning": "VERDICT: correct? no.", "verdict": "incorrect"}')
    assert (reading.verdict, reading.reasoning) == (False, "VERDICT: correct? no.")
    assert JudgeConfig(model="j", user_template="{prediction}", reasoning=True).max_tokens == 1024  # its default


def test_reasoning_with_the_one_word_budget_is_refused_saying_what_to_do() -> None:
    with pytest.raises(ConfigError, match=r"^command line: judge: max_tokens = 16 leaves no room for reasoning[^\n]*$"):
        with_overrides(load_config(example_config("imdb")), {"judge.reasoning": True})


@pytest.mark.parametrize(
    ("reply", "score", "passed"),
    [("SCORE: 4", 4.0, True), ("Fine.\nSCORE: 2", 2.0, False), ("**SCORE:** 5/5", 5.0, True), ("3", 3.0, True),
     ("SCORE: 6", None, None), ("SCORE: 3.5", None, None), ("SCORE: good", None, None), ('{"score": 1}', 1.0, False)],
)
def test_a_score_judge_reads_an_integer_on_its_scale(reply: str, score: float | None, passed: bool | None) -> None:
    config = task(**{"judge.kind": "score", "judge.scale": [1, 5], "judge.pass_at": 3})
    (judge,) = judges_for(config, COLUMNS)
    reading = judge.read(reply)
    assert (reading.score, reading.verdict) == (score, passed)


def test_a_score_judge_is_told_its_rubric_and_scale() -> None:
    config = task(**{
        "judge.kind": "score", "judge.scale": [0, 10], "judge.rubric": "10: exactly right.", "judge.constrain": False,
    })
    (judge,) = judges_for(config, COLUMNS)
    content = judge.messages(ROW, "Crime")[-1]["content"]
    assert content.endswith("Rubric:\n10: exactly right.\n\nEnd your reply with a final line of the form "
                            "`SCORE: <score>`, where <score> is an integer from 0 to 10.")
    assert judge.read("SCORE: 7").verdict is None  # no pass_at: a score, no verdict


@pytest.mark.parametrize(
    ("changes", "message"),
    [({"judge.scale": [5, 1]}, "the lowest score must be below the highest"),
     ({"judge.kind": "score", "judge.pass_at": 9}, "pass_at: 9 is outside the scale"),
     ({"judge.pass_at": 3}, "belong to a judge of kind"),
     ({"judge.repeats": 3}, "repeats = 3 needs a temperature above 0")],
)
def test_inconsistent_judge_settings_are_refused(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        task(**changes)


def test_a_reference_column_is_read_as_reference() -> None:
    data = task().model_dump()
    data["dataset"]["reference_column"] = "Genre"
    data["judge"]["user_template"] = "Expected: {reference}. Got: {prediction}"
    (judge,) = judges_for(TaskConfig.model_validate(data), COLUMNS)
    assert judge.messages(ROW, "Drama")[-1]["content"] == "Expected: Crime. Got: Drama"
    assert judge.fields == ("Genre",)
    with pytest.raises(ConfigError, match=r"placeholder \{reference\}"):
        judges_for(task(**{"judge.user_template": "{reference}"}), COLUMNS)


def test_repeats_are_separate_calls_whose_majority_decides() -> None:
    config = task(**{"judge.repeats": 3, "judge.temperature": 0.7})
    builder = PromptBuilder(config, COLUMNS)
    requests = [builder.judge(ROW, "Crime", 0, repeat) for repeat in range(3)]
    assert [request.custom_id for request in requests] == ["judge:7", "judge@2:7", "judge@3:7"]
    assert [request.body["seed"] for request in requests] == [0, 1, 2]
    join = JoinState(("Crime",), builder.judges)
    carried = join.prediction(ROW, ChatResult("predict:7", "Crime", "m", Usage(1, 1), 0.1))
    assert isinstance(carried, Row)
    assert join.verdict(carried, ChatResult("judge@3:7", "incorrect", "m", Usage(), 0.1)) is None
    assert join.verdict(carried, ChatResult("judge:7", "correct", "m", Usage(), 0.1)) is None
    joined = join.verdict(carried, ChatResult("judge@2:7", "correct", "m", Usage(), 0.1))
    assert joined is not None and joined.verdict is True
    assert joined.repeat_verdicts == (True, True, False) and joined.verdicts == (True,)


def test_a_bad_setting_in_a_panel_is_named_once_by_its_place() -> None:
    data = task().model_dump(mode="json")
    judge = data.pop("judge")
    data["judge"] = [{**judge, "name": "a", "temperature": 9}, {**judge, "name": "b"}]
    with pytest.raises(ConfigError) as caught:
        parse_config(data, source="t.toml", base_dir=Path("."))
    assert str(caught.value) == "t.toml: judge.0.temperature: Input should be less than or equal to 2"
