"""The simulator as a judge: final lines with decoys, scores, pairwise verdicts, seeds, logprobs."""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter
from typing import Any

import pytest
from openai.types.chat import ChatCompletion

from adapters.server.backends import SimBackend, SimSettings
from adapters.server.backends.base import BackendReply, TokenLogprob

from .test_server import sim_client
from .test_server_batches import assert_valid, batch_client, jsonl, lines_of, raw_json, settle, submit

REASON = "First reason step by step."
VERDICT = (
    "End your reply with a final line of the form `VERDICT: <verdict>`, where <verdict> is one of: correct, incorrect."
)
SCORE = "End your reply with a final line of the form `SCORE: <score>`, where <score> is an integer from 1 to 5."
WINNER = "End your reply with a final line of the form `WINNER: <winner>`, where <winner> is one of: A, B, tie."


def user(content: str) -> list[dict[str, Any]]:
    return [{"role": "system", "content": "You are a strict grader."}, {"role": "user", "content": content}]


def question(i: int, instruction: str, *, reasoning: bool = False) -> list[dict[str, Any]]:
    ask = f"{REASON} {instruction}" if reasoning else instruction
    return user(f"Question {i}: what is {i} + {i}?\nAnswer: {2 * i + i % 3}\n\n{ask}")


def pair_prompt(first: str, second: str, instruction: str = WINNER) -> str:
    return (
        "[The Task]\nName a colour.\n\n"
        f"[The Start of Answer A]\n{first}\n[The End of Answer A]\n\n"
        f"[The Start of Answer B]\n{second}\n[The End of Answer B]\n\n{instruction}"
    )


def judge_schema(key: str, spec: dict[str, Any], *, reasoning: bool = True) -> dict[str, Any]:
    properties = {"reasoning": {"type": "string"}} if reasoning else {}
    properties[key] = spec
    schema = {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}
    return {"type": "json_schema", "json_schema": {"name": "judge", "strict": True, "schema": schema}}


async def reply(backend: SimBackend, messages: list[dict[str, Any]], **body: Any) -> BackendReply:
    return await backend.complete({"model": "m", "messages": messages, **body})


async def text(backend: SimBackend, messages: list[dict[str, Any]], **body: Any) -> str:
    content = (await reply(backend, messages, **body)).content
    assert content is not None
    return content


def marker_lines(content: str, marker: str) -> list[str]:
    return [line.removeprefix(f"{marker}: ") for line in content.splitlines() if line.startswith(f"{marker}: ")]


# Final lines


async def test_reasoning_verdict_has_a_decoy_line_before_its_final_line() -> None:
    backend = SimBackend(SimSettings())
    replies = [await text(backend, question(i, VERDICT, reasoning=True)) for i in range(40)]
    finals: Counter[str] = Counter()
    for content in replies:
        first, last = marker_lines(content, "VERDICT")
        assert content.startswith("(simulated reasoning)")
        assert content.endswith(f"\nVERDICT: {last}")
        assert {first, last} == {"correct", "incorrect"}  # a first-line reader gets the other verdict
        assert 2 <= content.count(".") <= 4
        finals[last] += 1
    assert finals["correct"] > finals["incorrect"] > 0


async def test_plain_verdict_is_just_the_final_line() -> None:
    backend = SimBackend(SimSettings())
    replies = {await text(backend, question(i, VERDICT)) for i in range(40)}
    assert replies == {"VERDICT: correct", "VERDICT: incorrect"}


@pytest.mark.parametrize(("rate", "expected"), [(1.0, {"yes"}), (0.0, {"no"})])
async def test_other_markers_and_words_follow_the_correct_rate(rate: float, expected: set[str]) -> None:
    instruction = "End your reply with a final line of the form `JUDGEMENT: <judgement>`, where <judgement> is one of: yes, no."
    backend = SimBackend(SimSettings(judge_correct_rate=rate))
    replies = [await text(backend, question(i, instruction, reasoning=True)) for i in range(30)]
    assert {marker_lines(content, "JUDGEMENT")[-1] for content in replies} == expected
    assert all(marker_lines(content, "JUDGEMENT")[0] != marker_lines(content, "JUDGEMENT")[-1] for content in replies)


async def test_verdicts_share_is_the_correct_rate() -> None:
    backend = SimBackend(SimSettings(judge_correct_rate=0.75))
    replies = [await text(backend, question(i, VERDICT)) for i in range(400)]
    share = replies.count("VERDICT: correct") / len(replies)
    assert 0.68 <= share <= 0.82


async def test_without_a_seed_the_verdict_is_drawn_from_the_documented_hash() -> None:
    settings = SimSettings(judge_correct_rate=0.5)
    backend = SimBackend(settings)
    for i in range(40):
        messages = question(i, VERDICT)
        key = json.dumps([settings.seed, "m", messages], sort_keys=True, separators=(",", ":")).encode()
        draw = int.from_bytes(hashlib.blake2b(key, digest_size=16).digest()[:8], "big") / 2.0**64
        expected = "correct" if draw < settings.judge_correct_rate else "incorrect"
        assert await text(backend, messages) == f"VERDICT: {expected}"


# Scores


@pytest.mark.parametrize(("low", "high"), [(1, 5), (-2, 2), (0, 10)])
async def test_scores_stay_on_the_scale_and_lean_with_the_rate(low: int, high: int) -> None:
    instruction = SCORE.replace("from 1 to 5", f"from {low} to {high}")
    means = []
    for rate in (0.25, 0.75):
        backend = SimBackend(SimSettings(judge_correct_rate=rate))
        scores = [int(marker_lines(await text(backend, question(i, instruction)), "SCORE")[-1]) for i in range(400)]
        assert low <= min(scores) and max(scores) <= high
        counts = Counter(scores)
        assert len(counts) > (high - low + 1) / 2  # spread over the scale
        assert max(counts.values()) > 2 * min(counts.values())  # far from uniform
        means.append(sum(scores) / len(scores))
    middle = (low + high) / 2
    assert means[0] < middle - 0.1 * (high - low) and means[1] > middle + 0.1 * (high - low)


async def test_reasoning_score_has_a_decoy_score_on_the_scale() -> None:
    backend = SimBackend(SimSettings())
    for i in range(40):
        content = await text(backend, question(i, SCORE, reasoning=True))
        decoy, final = map(int, marker_lines(content, "SCORE"))
        assert decoy != final and 1 <= decoy <= 5 and 1 <= final <= 5
        assert content.endswith(f"\nSCORE: {final}")


# Pairwise


def answers(i: int) -> tuple[str, str]:
    return f"Answer text {i}: blue", f"Other answer {i}: a shade of red"


async def winners(backend: SimBackend, count: int) -> list[tuple[str, str]]:
    """Each pair's winner judged in the first order, then in the swapped one."""
    out = []
    for i in range(count):
        first, second = answers(i)
        forward = marker_lines(await text(backend, user(pair_prompt(first, second))), "WINNER")[-1]
        swapped = marker_lines(await text(backend, user(pair_prompt(second, first))), "WINNER")[-1]
        out.append((forward, swapped))
    return out


async def test_pairwise_verdicts_agree_under_swap_without_position_bias() -> None:
    judged = await winners(SimBackend(SimSettings()), 200)
    assert set(judged) == {("A", "B"), ("B", "A")}
    assert 60 <= judged.count(("A", "B")) <= 140
    backend = SimBackend(SimSettings(judge_first_position_rate=0.0))
    same = [await text(backend, user(pair_prompt(f" same {i} ", f"same {i}"))) for i in range(20)]
    assert set(same) == {"WINNER: tie"}


async def test_first_position_rate_raises_the_share_of_a() -> None:
    judged = await winners(SimBackend(SimSettings(judge_first_position_rate=0.3)), 300)
    verdicts = [verdict for pair in judged for verdict in pair]
    share = verdicts.count("A") / len(verdicts)  # 0.5 without bias; 0.5 + 0.3 * 0.5 with it
    assert 0.6 <= share <= 0.7
    assert 0.2 <= judged.count(("A", "A")) / len(judged) <= 0.4  # the preferred answer's order, then bias


async def test_reasoning_pairwise_decoy_names_another_choice() -> None:
    backend = SimBackend(SimSettings())
    content = await text(backend, user(pair_prompt("red", "blue", f"{REASON} {WINNER}")))
    decoy, final = marker_lines(content, "WINNER")
    assert decoy != final and {decoy, final} <= {"A", "B", "tie"}


# Seeds


async def test_seeds_draw_apart_and_each_seed_repeats() -> None:
    backend = SimBackend(SimSettings(judge_correct_rate=0.5))
    by_seed = [[await text(backend, question(i, VERDICT), seed=seed) for i in range(60)] for seed in (0, 1, 2)]
    again = [await text(backend, question(i, VERDICT), seed=1) for i in range(60)]
    assert again == by_seed[1]
    assert by_seed[0] != by_seed[1] != by_seed[2] != by_seed[0]
    differing = sum(len(set(row)) > 1 for row in zip(*by_seed, strict=True))
    assert differing > 20  # independent draws at 0.5: three agree a quarter of the time


# Structured output


async def test_structured_judges_answer_reasoning_then_their_value() -> None:
    backend = SimBackend(SimSettings())
    verdict_format = judge_schema("verdict", {"type": "string", "enum": ["correct", "incorrect"]})
    score_format = judge_schema("score", {"type": "integer", "minimum": 1, "maximum": 10})
    for i in range(20):
        verdict = json.loads(await text(backend, question(i, REASON), response_format=verdict_format))
        assert list(verdict) == ["reasoning", "verdict"] and verdict["verdict"] in {"correct", "incorrect"}
        assert verdict["reasoning"].startswith("(simulated reasoning)")
        assert marker_lines(verdict["reasoning"], "VERDICT") == [({"correct", "incorrect"} - {verdict["verdict"]}).pop()]
        score = json.loads(await text(backend, question(i, REASON), response_format=score_format))
        assert list(score) == ["reasoning", "score"] and score["score"] in range(1, 11)
    lone = judge_schema("score", {"type": "integer", "minimum": 1, "maximum": 5}, reasoning=False)
    assert list(json.loads(await text(backend, question(1, "Score it."), response_format=lone))) == ["score"]


async def test_structured_verdicts_follow_the_text_rule() -> None:
    backend = SimBackend(SimSettings(judge_correct_rate=0.5))
    verdict_format = judge_schema("verdict", {"type": "string", "enum": ["correct", "incorrect"]})
    for i in range(40):
        messages = question(i, VERDICT)
        final = marker_lines(await text(backend, messages), "VERDICT")[-1]
        assert json.loads(await text(backend, messages, response_format=verdict_format))["verdict"] == final


async def test_structured_pairwise_agrees_under_swap() -> None:
    backend = SimBackend(SimSettings())
    winner_format = judge_schema("winner", {"type": "string", "enum": ["A", "B", "tie"]})
    lone_format = judge_schema("winner", {"type": "string", "enum": ["A", "B", "tie"]}, reasoning=False)
    for i in range(40):
        first, second = answers(i)
        for response_format in (winner_format, lone_format):
            forward = json.loads(await text(backend, user(pair_prompt(first, second, REASON)), response_format=response_format))
            swapped = json.loads(await text(backend, user(pair_prompt(second, first, REASON)), response_format=response_format))
            assert {forward["winner"], swapped["winner"]} == {"A", "B"}


async def test_the_one_enum_answer_schema_is_answered_as_before() -> None:
    backend = SimBackend(SimSettings())
    answer_format = judge_schema("answer", {"type": "string", "enum": ["correct", "incorrect"]}, reasoning=False)
    messages = [question(i, "Is it right? correct or incorrect") for i in range(30)]
    replies = {await text(backend, m, response_format=answer_format) for m in messages}
    assert replies == {'{"answer": "correct"}', '{"answer": "incorrect"}'}


# Logprobs


def choice_token(logprobs: tuple[TokenLogprob, ...], content: str, value: str) -> TokenLogprob:
    """The token that starts at the last occurrence of ``value`` in ``content``."""
    offset, position = content.rfind(value), 0
    for token in logprobs:
        if position == offset:
            assert token.token == value
            return token
        position += len(token.token)
    raise AssertionError(f"no token starts at {offset}")


def assert_spells_with_one_choice(result: BackendReply, value: str, choices: int, top: int) -> TokenLogprob:
    """The tokens spell the content; only the choice token is uncertain; its alternatives sum to about 1."""
    assert result.content is not None and result.logprobs is not None
    assert "".join(token.token for token in result.logprobs) == result.content
    chosen = choice_token(result.logprobs, result.content, value)
    assert [token for token in result.logprobs if token.logprob < -0.001] == [chosen]
    assert all(len(token.top) <= max(top, 0) for token in result.logprobs)
    assert 0.5 < math.exp(chosen.logprob) < 1.0
    listed = [math.exp(logprob) for _, logprob in chosen.top]
    assert len(chosen.top) == min(top, choices) and chosen.top[:1] == ((value, chosen.logprob),)[:top]
    assert listed == sorted(listed, reverse=True)
    if top >= choices:
        assert sum(listed) == pytest.approx(1.0)
        assert sorted(text for text, _ in chosen.top) != [value]
    return chosen


async def test_logprobs_of_a_reasoning_verdict() -> None:
    backend = SimBackend(SimSettings())
    for i in range(10):
        result = await reply(backend, question(i, VERDICT, reasoning=True), logprobs=True, top_logprobs=5)
        assert result.content is not None
        final = marker_lines(result.content, "VERDICT")[-1]
        chosen = assert_spells_with_one_choice(result, final, 2, 5)
        assert {text for text, _ in chosen.top} == {"correct", "incorrect"}


@pytest.mark.parametrize("top", [0, 1, 3, 20])
async def test_logprobs_of_a_score_spread_over_the_scale(top: int) -> None:
    backend = SimBackend(SimSettings())
    probabilities = set()
    for i in range(10):
        result = await reply(backend, question(i, SCORE), logprobs=True, top_logprobs=top)
        assert result.content is not None
        chosen = assert_spells_with_one_choice(result, result.content.removeprefix("SCORE: "), 5, top)
        assert all(int(text) in range(1, 6) for text, _ in chosen.top)
        probabilities.add(round(chosen.logprob, 6))
    assert len(probabilities) > 5  # drawn per request


async def test_logprobs_of_structured_and_legacy_answers() -> None:
    backend = SimBackend(SimSettings())
    winner_format = judge_schema("winner", {"type": "string", "enum": ["A", "B", "tie"]})
    messages = user(pair_prompt("x", "y", REASON))
    result = await reply(backend, messages, response_format=winner_format, logprobs=True, top_logprobs=3)
    assert result.content is not None
    assert_spells_with_one_choice(result, json.loads(result.content)["winner"], 3, 3)
    score_format = judge_schema("score", {"type": "integer", "minimum": 1, "maximum": 3})
    result = await reply(backend, question(2, REASON), response_format=score_format, logprobs=True, top_logprobs=3)
    assert result.content is not None
    assert_spells_with_one_choice(result, str(json.loads(result.content)["score"]), 3, 3)
    legacy = await reply(backend, user("Expected: Drama. Got: Crime. Reply correct or incorrect."), logprobs=True, top_logprobs=2)
    assert legacy.content in {"correct", "incorrect"}
    assert_spells_with_one_choice(legacy, legacy.content, 2, 2)
    wrapped = await reply(backend, question(3, VERDICT), response_format={"type": "json_object"}, logprobs=True, top_logprobs=2)
    assert wrapped.content is not None
    assert_spells_with_one_choice(wrapped, marker_lines(json.loads(wrapped.content)["answer"], "VERDICT")[-1], 2, 2)
    plain = await reply(backend, user("Say something."), logprobs=True)
    assert plain.content == "simulated answer" and plain.logprobs is not None
    assert [token.token for token in plain.logprobs] == ["simulated", " ", "answer"]
    assert all(token.top == () and token.logprob > -0.001 for token in plain.logprobs)
    assert (await reply(backend, question(3, VERDICT))).logprobs is None


# Over HTTP


async def test_judges_over_http_with_the_openai_sdk() -> None:
    async with sim_client(SimSettings(judge_first_position_rate=0.0)) as client:
        reasoning = await client.chat.completions.create(
            model="m", messages=question(1, VERDICT, reasoning=True), logprobs=True, top_logprobs=4  # type: ignore[arg-type]
        )
        seeded = [
            (await client.chat.completions.create(model="m", messages=question(i, SCORE), seed=seed)).choices[0].message.content  # type: ignore[arg-type]
            for i in range(20)
            for seed in (0, 1)
        ]
        forward = await client.chat.completions.create(model="m", messages=user(pair_prompt("x", "y")))  # type: ignore[arg-type]
        swapped = await client.chat.completions.create(model="m", messages=user(pair_prompt("y", "x")))  # type: ignore[arg-type]
        body = {"model": "m", "messages": question(2, SCORE, reasoning=True), "logprobs": True, "top_logprobs": 5}
        status, raw = await raw_json(client, "POST", "chat/completions", json=body)
    content = reasoning.choices[0].message.content
    assert content is not None and len(marker_lines(content, "VERDICT")) == 2
    logprobs = reasoning.choices[0].logprobs
    assert logprobs is not None and logprobs.content is not None and logprobs.refusal is None
    assert "".join(token.token for token in logprobs.content) == content
    final = logprobs.content[-1]
    assert final.token == marker_lines(content, "VERDICT")[-1] and final.bytes == list(final.token.encode())
    assert sum(math.exp(top.logprob) for top in final.top_logprobs) == pytest.approx(1.0)
    assert seeded[0::2] != seeded[1::2]
    assert {forward.choices[0].message.content, swapped.choices[0].message.content} == {"WINNER: A", "WINNER: B"}
    assert status == 200
    assert_valid("CreateChatCompletionResponse", raw)
    tokens = raw["choices"][0]["logprobs"]["content"]
    assert "".join(token["token"] for token in tokens) == raw["choices"][0]["message"]["content"]
    assert all(re.fullmatch(r"\w+|\s+|[^\w\s]", token["token"]) for token in tokens)


async def test_batch_output_lines_carry_logprobs() -> None:
    lines = [
        {
            "custom_id": f"judge-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "m", "messages": question(i, VERDICT, reasoning=True), "logprobs": True, "top_logprobs": 2},
        }
        for i in range(5)
    ]
    async with batch_client() as client:
        batch = await settle(client, (await submit(client, jsonl(lines))).id)
        output = await lines_of(client, batch.output_file_id)
    assert len(output) == 5
    for line in output:
        body = line["response"]["body"]
        assert_valid("CreateChatCompletionResponse", body)
        choice = ChatCompletion.model_validate(body).choices[0]
        assert choice.logprobs is not None and choice.logprobs.content is not None
        assert choice.logprobs.content[-1].token in {"correct", "incorrect"}
        assert len(choice.logprobs.content[-1].top_logprobs) == 2
