"""The simulator's verdict judge with known error rates, where the prompt states the truth."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from adapters.server.backends import SimBackend, SimSettings

from .test_sim_judging import REASON, VERDICT, judge_schema, marker_lines, text, user

PER_TRUTH = 2500  # predictions of each truth per judge kind: 5000 requests each

VERDICT_FORMAT = judge_schema("verdict", {"type": "string", "enum": ["correct", "incorrect"]})
ANSWER_FORMAT = judge_schema("answer", {"type": "string", "enum": ["correct", "incorrect"]}, reasoning=False)


def truth_prompt(i: int, right: bool, instruction: str) -> list[dict[str, Any]]:
    """A judge prompt whose Reference and Prediction lines make the prediction right or wrong."""
    prediction = f"  CITY {i} " if right else f"town {i}"
    return user(f"Question {i}: name the city.\nReference: Village {i}, city {i}\nPrediction: {prediction}\n\n{instruction}")


Judge = Callable[[SimBackend, list[dict[str, Any]]], Awaitable[bool]]


async def bare_word(backend: SimBackend, messages: list[dict[str, Any]]) -> bool:
    return await text(backend, messages) == "correct"


async def final_line(backend: SimBackend, messages: list[dict[str, Any]]) -> bool:
    return marker_lines(await text(backend, messages), "VERDICT")[-1] == "correct"


async def reasoning_object(backend: SimBackend, messages: list[dict[str, Any]]) -> bool:
    verdict = json.loads(await text(backend, messages, response_format=VERDICT_FORMAT))
    assert list(verdict) == ["reasoning", "verdict"]
    return bool(verdict["verdict"] == "correct")


async def answer_object(backend: SimBackend, messages: list[dict[str, Any]]) -> bool:
    return bool(json.loads(await text(backend, messages, response_format=ANSWER_FORMAT)) == {"answer": "correct"})


JUDGES: dict[str, tuple[str, Judge]] = {
    "bare word": ("Reply correct or incorrect.", bare_word),
    "final line": (VERDICT, final_line),
    "reasoning final line": (f"{REASON} {VERDICT}", final_line),
    "reasoning, verdict object": (REASON, reasoning_object),
    "one-enum answer object": ("Judge the prediction.", answer_object),
}


async def rates(backend: SimBackend, instruction: str, judge: Judge) -> tuple[float, float]:
    """The judge's measured sensitivity and specificity over PER_TRUTH right and wrong predictions."""
    right = [await judge(backend, truth_prompt(i, True, instruction)) for i in range(PER_TRUTH)]
    wrong = [await judge(backend, truth_prompt(i, False, instruction)) for i in range(PER_TRUTH)]
    return sum(right) / PER_TRUTH, 1.0 - sum(wrong) / PER_TRUTH


# Measured (deterministic, seed 0), sensitivity / specificity:
# at 0.9 / 0.7: bare word 0.896 / 0.710, final line 0.917 / 0.712, reasoning final line 0.902 / 0.699,
#   reasoning-verdict object 0.899 / 0.679, one-enum answer object 0.900 / 0.683;
# at 0.6 / 0.95: bare word 0.592 / 0.956, final line 0.615 / 0.948, reasoning final line 0.599 / 0.951,
#   reasoning-verdict object 0.599 / 0.951, one-enum answer object 0.619 / 0.948.
@pytest.mark.parametrize(("sensitivity", "specificity"), [(0.9, 0.7), (0.6, 0.95)])
@pytest.mark.parametrize("kind", list(JUDGES))
async def test_measured_error_rates_are_the_settings(kind: str, sensitivity: float, specificity: float) -> None:
    backend = SimBackend(SimSettings(judge_sensitivity=sensitivity, judge_specificity=specificity))
    measured = await rates(backend, *JUDGES[kind])
    assert measured == pytest.approx((sensitivity, specificity), abs=0.03)


@pytest.mark.parametrize("kind", list(JUDGES))
async def test_a_perfect_judge_reads_the_truth(kind: str) -> None:
    instruction, judge = JUDGES[kind]
    perfect = SimBackend(SimSettings(judge_correct_rate=1.0, judge_sensitivity=1.0, judge_specificity=1.0))
    plain = SimBackend(SimSettings(judge_correct_rate=1.0))
    known = [
        ("Reference: Paris\nPrediction: Paris", True),
        ("Reference: Paris, City of Light\nPrediction:   city OF light ", True),
        ("Prediction: STRASSE\nReference: straße", True),  # case-folded, either order
        ("Reference: Paris, Lyon\nPrediction: Paris, Lyon", False),  # one answer, not the list
        ("Reference: Paris,\nPrediction: ", False),  # an empty item accepts nothing
        ("Reference: Paris\nPrediction: Marseille", False),
    ]
    for lines, expected in known:
        assert await judge(perfect, user(f"Name a city.\n{lines}\n\n{instruction}")) is expected, lines
    earlier = [{"role": "user", "content": "Reference: Paris\nPrediction: Paris"}, {"role": "assistant", "content": "ok"}]
    last = user(f"Reference: Paris\nPrediction: Rome\n\n{instruction}")
    assert await judge(perfect, [*earlier, *last]) is False  # the last user message counts
    unknown = [
        "The Reference: Paris\nPrediction: Rome",  # not at a line's start
        "Reference: Paris\nprediction: Rome",  # the prefixes are exact
        "Reference: Paris\nRome",
    ]
    for lines in unknown:
        messages = user(f"Name a city.\n{lines}\n\n{instruction}")
        assert await judge(perfect, messages) is await judge(plain, messages), lines


def hashed(messages: list[dict[str, Any]], seed: int | None = None) -> tuple[float, int]:
    """The module docstring's per-request draw (in [0, 1)) and pick, for model ``m`` and sim seed 0."""
    parts: list[Any] = [0, "m", messages] + ([] if seed is None else [seed])
    digest = hashlib.blake2b(json.dumps(parts, sort_keys=True, separators=(",", ":")).encode(), digest_size=16).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64, int.from_bytes(digest[8:], "big")


async def test_the_verdict_is_the_documented_draw_against_the_truth_rate() -> None:
    backend = SimBackend(SimSettings(judge_sensitivity=0.8, judge_specificity=0.6))
    for instruction, judge in JUDGES.values():
        for i in range(40):
            for right, rate in ((True, 0.8), (False, 1.0 - 0.6)):
                messages = truth_prompt(i, right, instruction)
                assert await judge(backend, messages) is (hashed(messages)[0] < rate)
    for i in range(40):
        messages = truth_prompt(i, True, VERDICT)
        expected = "correct" if hashed(messages, 3)[0] < 0.8 else "incorrect"
        assert await text(backend, messages, seed=3) == f"VERDICT: {expected}"  # the body's seed takes part


async def test_unset_settings_ignore_the_truth_lines() -> None:
    backend = SimBackend(SimSettings(judge_correct_rate=0.5))
    for kind, (instruction, judge) in JUDGES.items():
        for i in range(100):
            for truth in (True, False):
                messages = truth_prompt(i, truth, instruction)
                draw, pick = hashed(messages)
                expected = pick % 2 == 0 if kind == "one-enum answer object" else draw < 0.5  # as before
                assert await judge(backend, messages) is expected


async def test_without_truth_lines_the_settings_change_nothing() -> None:
    plain = SimBackend(SimSettings())
    knowing = SimBackend(SimSettings(judge_sensitivity=0.1, judge_specificity=0.1))
    formats: list[dict[str, Any] | None] = [None, VERDICT_FORMAT, ANSWER_FORMAT, {"type": "json_object"}]
    for i in range(60):
        for instruction, _ in JUDGES.values():
            messages = user(f"Question {i}: name the city.\nAnswer: city {i}\n\n{instruction}")
            for response_format in formats:
                body = {} if response_format is None else {"response_format": response_format}
                assert await text(knowing, messages, **body) == await text(plain, messages, **body)


@pytest.mark.parametrize(
    "settings",
    [
        {"judge_sensitivity": 0.9},
        {"judge_specificity": 0.9},
        {"judge_sensitivity": 1.1, "judge_specificity": 0.9},
        {"judge_sensitivity": 0.9, "judge_specificity": -0.1},
    ],
)
def test_both_rates_or_neither_each_in_the_unit_interval(settings: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="judge_s"):
        SimSettings(**settings)  # type: ignore[arg-type]
