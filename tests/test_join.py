from __future__ import annotations

import pytest

from engine.config import JudgeConfig
from engine.judges import ScoreJudge, VerdictJudge
from engine.run.pipeline import JoinState, LiveStats, _joined, _Judgement
from engine.templates import Template, Templates
from engine.types import ChatResult, Failure, JoinedRow, Outcome, Row, TokenLogprob, Usage

LABELS = ("Drama", "Crime", "Comedy")


def judge(prefix: str = "judge") -> VerdictJudge:
    """A correct/incorrect judge with the default verdict words."""
    template = Template.parse("{prediction}", where="test")
    return VerdictJudge(JudgeConfig(model="j", user_template="{prediction}"), prefix, Templates(template, template), LABELS)


def result(custom_id: str, content: str) -> ChatResult:
    return ChatResult(custom_id, content, "m", Usage(3, 1), 0.2)


def row(row_id: str, labels: tuple[str, ...] | None = ("Crime", "Drama")) -> Row:
    return Row(row_id, int(row_id), {"text": f"row {row_id}"}, labels)


def predicted(join: JoinState, data_row: Row, prediction: ChatResult) -> Row:
    """The row as its judge calls carry it: with its prediction."""
    carried = join.prediction(data_row, prediction)
    assert isinstance(carried, Row) and carried.prediction == prediction
    return carried


def test_prediction_waits_for_its_verdict_in_any_order() -> None:
    join = JoinState(LABELS, (judge(),))
    one = join.prediction(row("1"), result("predict:1", "Drama"))
    two = join.prediction(row("2"), result("predict:2", "Comedy"))
    assert isinstance(one, Row) and isinstance(two, Row)
    assert len(join) == 0  # each prediction waits in its row, which its judge call carries
    second = join.verdict(two, result("judge:2", "incorrect"))
    first = join.verdict(one, result("judge:1", "correct"))
    assert len(join) == 0 and first is not None and second is not None
    assert (first.row_id, first.prediction, first.verdict, first.ground_truth_correct) == ("1", "Drama", True, True)
    assert (second.verdict, second.ground_truth_correct, second.prediction_valid) == (False, False, True)
    assert first.predict_tokens == Usage(3, 1) and first.judge_latency_s == 0.2


def test_failed_prediction_completes_the_row_at_once() -> None:
    join = JoinState(LABELS, (judge(),))
    joined = join.prediction(row("1"), Failure("predict:1", "http_400", "bad request", 400))
    assert isinstance(joined, JoinedRow) and joined.status == "predict_failed" and joined.error == "http_400: bad request"
    assert len(join) == 0


def test_failed_verdict_keeps_the_prediction() -> None:
    join = JoinState(LABELS, (judge(),))
    carried = predicted(join, row("1"), result("predict:1", "Thriller"))
    joined = join.verdict(carried, Failure("judge:1", "timeout", "timed out"))
    assert joined is not None and joined.status == "judge_failed" and joined.prediction == "Thriller"
    assert joined.prediction_valid is False and joined.verdict is None


def test_unrecognised_verdict_and_rows_without_labels() -> None:
    join = JoinState((), (judge(),))
    carried = predicted(join, row("1", labels=None), result("predict:1", "anything"))
    joined = join.verdict(carried, result("judge:1", "maybe"))
    assert joined is not None and joined.status == "judged" and joined.verdict is None and joined.verdict_text == "maybe"
    assert joined.ground_truth_correct is None and joined.prediction_valid is None


def test_live_stats_count_each_outcome() -> None:
    join = JoinState(LABELS, (judge(),))
    stats = LiveStats(total=3)
    stats.count(join.verdict(predicted(join, row("1"), result("predict:1", "Drama")), result("judge:1", "correct")))  # type: ignore[arg-type]
    stats.count(join.prediction(row("2"), Failure("predict:2", "timeout", "t")))  # type: ignore[arg-type]
    three = predicted(join, row("3"), result("predict:3", "Drama"))
    stats.count(join.verdict(three, result("judge:3", "incorrect")))  # type: ignore[arg-type]
    assert (stats.judged, stats.failed, stats.done) == (2, 1, 3)
    assert stats.judge_accuracy == 0.5


PANEL = ("judge.a", "judge.b", "judge.c")


def panel() -> JoinState:
    return JoinState(LABELS, tuple(judge(prefix) for prefix in PANEL))


def test_a_panel_row_completes_with_its_last_judge_and_takes_the_majority() -> None:
    join = panel()
    carried = predicted(join, row("1"), result("predict:1", "Drama"))
    assert join.verdict(carried, result("judge.b:1", "incorrect")) is None
    assert join.verdict(carried, result("judge.a:1", "correct")) is None
    assert len(join) == 1
    joined = join.verdict(carried, result("judge.c:1", "correct"))
    assert joined is not None and joined.verdicts == (True, False, True) and joined.verdict is True
    assert joined.verdict_texts == ("correct", "incorrect", "correct")
    assert joined.judge_tokens == Usage(9, 3)


def test_a_panel_tie_or_failure_has_no_majority() -> None:
    join = panel()
    carried = predicted(join, row("1"), result("predict:1", "Drama"))
    join.verdict(carried, result("judge.a:1", "correct"))
    join.verdict(carried, Failure("judge.b:1", "timeout", "timed out"))
    joined = join.verdict(carried, result("judge.c:1", "incorrect"))
    assert joined is not None and joined.status == "judged"
    assert joined.verdicts == (True, None, False) and joined.verdict is None
    assert joined.error == "timeout: timed out"


def _every_reply() -> list[tuple[str, Outcome]]:
    """A judge's outcomes of every shape the join reads: answers, reasoning, unrecognised, logprobs, failures."""
    logprobs = (TokenLogprob("corr", -0.1), TokenLogprob("ect", -0.01))
    return [
        ("Drama", result("judge:1", "correct")),
        ("Drama", result("judge:1", "Incorrect.")),
        ("Drama", result("judge:1", "The answer names the genre.\nVERDICT: correct")),
        ("Drama", result("judge:1", "hmm\n" * 40 + "VERDICT: incorrect")),  # too long to be remembered
        ("Thriller", result("judge:1", "maybe")),
        ("Drama", result("judge:1", "")),
        ("Drama", result("judge:1", '{"reasoning": "The genre is right.", "verdict": "correct"}')),
        ("Drama", result("judge:1", '{"reasoning": "no answer"}')),
        ("Drama", result("judge:1", '{"reasoning": "", "verdict": "incorrect"}')),
        ("Drama", ChatResult("judge:1", "correct", "m", Usage(3, 1), None, logprobs=logprobs)),
        ("Drama", result("judge:1", "SCORE: 4")),
        ("Drama", result("judge:1", "5")),
        ("Drama", result("judge:1", "Reasoning.\nSCORE: 2")),
        ("Drama", Failure("judge:1", "timeout", "timed out")),
    ]


@pytest.mark.parametrize("config", [
    JudgeConfig(model="j", user_template="{prediction}"),
    JudgeConfig(model="j", user_template="{prediction}", reasoning=True, logprobs=True),
    JudgeConfig(model="j", user_template="{prediction}", kind="score", pass_at=4),
    JudgeConfig(model="j", user_template="{prediction}", kind="score", reasoning=True),
], ids=["verdict", "verdict-reasoning", "score", "score-reasoning"])
@pytest.mark.parametrize("labels", [("Crime", "Drama"), None])
def test_a_single_calls_row_is_joined_as_the_general_join_joins_it(config: JudgeConfig, labels: tuple[str, ...] | None) -> None:
    template = Template.parse("{prediction}", where="test")
    one = (ScoreJudge if config.kind == "score" else VerdictJudge)(config, "judge", Templates(template, template), LABELS)
    join = JoinState(LABELS, (one,))
    for prediction, reply in _every_reply() * 2:  # again: from what the join remembered
        carried = predicted(join, row("1", labels), result("predict:1", prediction))
        reading = one.read(reply.content, reply.logprobs) if isinstance(reply, ChatResult) else None
        general = _joined(carried, carried.prediction, frozenset(LABELS), verdicts=[_Judgement([reply], [reading])],
                          kind=config.kind)
        assert join.verdict(carried, reply) == general
