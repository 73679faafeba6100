from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engine.config import TaskConfig, VerdictConfig, load_config, parse_config
from engine.errors import ConfigError
from engine.judges import VerdictParser
from engine.prompts import PromptBuilder, prediction_is_valid
from engine.shipped import example_config
from engine.templates import Template, estimate_tokens
from engine.types import Row


def test_template_fills_fields_and_keeps_escaped_braces() -> None:
    template = Template.parse("Text: {Overview} {{literal}} -> {prediction}", where="t")
    assert template.fields == ("Overview", "prediction")
    assert template.render({"Overview": "A film", "prediction": "Drama"}) == "Text: A film {literal} -> Drama"


def test_braces_in_values_are_data_not_placeholders() -> None:
    template = Template.parse('Said: "{prediction}" about {Overview}', where="t")
    hostile = "{Overview} {0} {__class__} }{"
    assert template.render({"prediction": hostile, "Overview": "x"}) == f'Said: "{hostile}" about x'


@pytest.mark.parametrize("source", ["{open", "close}", "{a}}"])
def test_unmatched_brace_is_a_config_error_naming_the_template(source: str) -> None:
    with pytest.raises(ConfigError, match=r"judge.user_template: unmatched"):
        Template.parse(source, where="judge.user_template")


def test_verdicts_are_normalised() -> None:
    parse = VerdictParser(VerdictConfig())
    assert parse("correct") is True
    assert parse("  Correct.\n") is True
    assert parse('"incorrect"') is False
    assert parse("correct, because") is None


def test_prediction_validity_against_label_set() -> None:
    labels = frozenset({"Drama", "Sci-Fi"})
    assert prediction_is_valid("Drama", labels) is True
    assert prediction_is_valid(" Drama\n", labels) is True
    assert prediction_is_valid("drama", labels) is False
    assert prediction_is_valid("Drama.", labels) is False
    assert prediction_is_valid("Drama", frozenset()) is None


def test_token_estimate_counts_text_and_reply_budget() -> None:
    messages = [{"role": "system", "content": "x" * 400}, {"role": "user", "content": "y" * 40}]
    # 440 chars / 4 = 110, + 4 per message, + 3 priming, + 16 reply budget
    assert estimate_tokens(messages, 16) == 110 + 8 + 3 + 16


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("'correct'.", True),  # quote, then the full stop
        ('"incorrect".', False),
        ("`correct`", True),
        ("'Correct.'", True),  # the full stop inside the quotes
        ("correct...", None),  # an ellipsis is not a full stop
        ("'correct'...", None),
        ("correct..", None),
        ("'correct.'.", None),  # two full stops
    ],
)
def test_one_final_full_stop_inside_or_outside_the_quotes(text: str, expected: bool | None) -> None:
    assert VerdictParser(VerdictConfig())(text) is expected


def builder_for(tmp_path: Path, **changes: Any) -> tuple[PromptBuilder, TaskConfig]:
    data = load_config(example_config("imdb")).model_dump(mode="json")
    for dotted, value in changes.items():
        table, key = dotted.split(".")
        data[table][key] = value
    config = parse_config(data, source="imdb.toml", base_dir=tmp_path)
    return PromptBuilder(config, ["Overview", "Genre", "Director"]), config


ROW = Row("7", 7, {"Overview": "A heist.", "Director": "Mann"}, ("Crime",))


def test_system_prompts_are_templates(tmp_path: Path) -> None:
    builder, config = builder_for(
        tmp_path,
        **{"predict.system_prompt": "Choose one of: {labels}. Director: {Director}. {{literal}}",
           "judge.system_prompt": "Options {labels}; answer given: {prediction}"},
    )
    labels = ", ".join(config.labels)
    predict = builder.predict(ROW).body["messages"]
    assert predict[0] == {"role": "system", "content": f"Choose one of: {labels}. Director: Mann. {{literal}}"}
    judge = builder.judge(ROW, "Crime").body["messages"]
    assert judge[0] == {"role": "system", "content": f"Options {labels}; answer given: Crime"}
    assert "Director" in builder.template_fields  # read from the data set because a template needs it


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"predict.system_prompt": "Use {Plot}"}, r"^imdb.toml: predict.system_prompt: placeholder \{Plot\} is not a column"),
        ({"predict.system_prompt": "Use {prediction}"}, r"^imdb.toml: predict.system_prompt: placeholder \{prediction\}"),
        ({"predict.system_prompt": "JSON {\"a\": 1}"}, r"^imdb.toml: predict.system_prompt: unmatched '\{'"),
        ({"judge.system_prompt": "Use {Plot}"}, r"^imdb.toml: judge.system_prompt: placeholder \{Plot\}"),
        ({"predict.user_template": "{Plot}"}, r"^imdb.toml: predict.user_template: placeholder \{Plot\}"),
        ({"judge.user_template": "{Overview"}, r"^imdb.toml: judge.user_template: unmatched '\{'"),
    ],
)
def test_template_errors_name_the_file_and_the_field(tmp_path: Path, changes: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        builder_for(tmp_path, **changes)


def test_a_panel_judge_template_error_names_the_judge(tmp_path: Path) -> None:
    data = load_config(example_config("imdb")).model_dump(mode="json")
    judge = data.pop("judge")
    data["judge"] = [{**judge, "name": "strict"}, {**judge, "name": "lenient", "system_prompt": "{Plot}"}]
    config = parse_config(data, source="panel.toml", base_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"^panel.toml: judge lenient: system_prompt: placeholder \{Plot\}"):
        PromptBuilder(config, ["Overview", "Genre"])


def test_constrain_without_labels_names_the_file(tmp_path: Path) -> None:
    data = load_config(example_config("imdb")).model_dump(mode="json")
    data["labels"] = []
    data["predict"]["system_prompt"] = ""
    config = parse_config(data, source="imdb.toml", base_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"^imdb.toml: predict.constrain needs the task's `labels`"):
        PromptBuilder(config, ["Overview", "Genre"])
