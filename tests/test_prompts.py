from __future__ import annotations

import pytest

from engine.config import VerdictConfig
from engine.errors import ConfigError
from engine.prompts import Template, VerdictParser, estimate_tokens, prediction_is_valid


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
    with pytest.raises(ConfigError, match="judge.user_template: unmatched"):
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
