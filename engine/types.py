"""Values that flow through the engine: requests, results, failures, joined rows.

Every value is a frozen, slotted dataclass. ``custom_id`` is the join key everywhere: it is
``"predict:<row_id>"``, ``"judge:<row_id>"`` (``"judge.<name>:<row_id>"`` for each judge of a
panel; ``"judge@2:<row_id>"`` for a judge's second repeat) and survives the round trip through a
provider's Batch API unchanged.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

StageName = Literal["predict", "judge"]
RowStatus = Literal["judged", "predict_failed", "judge_failed", "skipped"]
STAGES: tuple[StageName, ...] = ("predict", "judge")


def call_prefix(caller: str, repeat: int) -> str:
    """The ``custom_id`` prefix of a caller's ``repeat``-th call of a row (0-based): the
    caller's own for the first, ``<caller>@<n>`` for the n-th after it."""
    return caller if repeat == 0 else f"{caller}@{repeat + 1}"


_REPEAT = re.compile(r"@\d+$")


def caller_of(custom_id: str) -> str:
    """The caller (``predict``, ``judge``, ``judge.<name>``) a ``custom_id`` belongs to, whatever its repeat."""
    return _REPEAT.sub("", custom_id.partition(":")[0])


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """One chat-completion call: ``body`` is the JSON body sent to ``/v1/chat/completions``.

    ``estimated_tokens`` is what the rate limiter charges before the call (prompt estimate plus
    ``max_tokens``); the real ``usage`` corrects it afterwards.
    """

    custom_id: str
    row_id: str
    stage: StageName
    body: dict[str, Any]
    estimated_tokens: int


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens a call used, as the endpoint reported them (zeros when it did not).

    ``prompt_tokens`` is the whole prompt; of it, ``cached_tokens`` were read from the provider's
    prompt cache (OpenAI's ``prompt_tokens_details.cached_tokens``, Anthropic's
    ``cache_read_input_tokens``) and ``cache_write_tokens`` written to it (Anthropic's
    ``cache_creation_input_tokens``): each priced at its own rate (``config.Price``).
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """One token of a reply with its log-probability, and the most likely alternatives at its
    position (``top``: token -> log-probability), as OpenAI's ``logprobs.content`` gives them."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True, slots=True)
class ChatResult:
    """A successful call. ``content`` is the assistant message text (never None); ``latency_s``
    is None for an answer that came back in a provider batch. ``cached``: the answer came from
    the response cache (``engine.cache``), no call was made; ``logprobs``: the reply's token
    log-probabilities as the endpoint gave them (``choices[0].logprobs.content``), when asked.
    """

    custom_id: str
    content: str
    model: str
    usage: Usage
    latency_s: float | None
    attempts: int = 1
    started_at: float = 0.0
    finished_at: float = 0.0
    rate_limited: int = 0
    cached: bool = False
    logprobs: tuple[TokenLogprob, ...] | None = None


@dataclass(frozen=True, slots=True)
class Failure:
    """A call that ended without a usable answer after all retries.

    ``reason`` is a short machine-readable code (``http_400``, ``timeout``, ``empty_response`` ...);
    ``message`` is for people and never contains a secret.
    """

    custom_id: str
    reason: str
    message: str
    status_code: int | None = None
    attempts: int = 1
    started_at: float = 0.0
    finished_at: float = 0.0
    rate_limited: int = 0


Outcome = ChatResult | Failure


@dataclass(frozen=True, slots=True)
class Row:
    """One data row as the pipeline sees it: its id, its position, its fields and its labels.

    ``fingerprint`` is ``row_fingerprint`` of its fields and labels, journaled with each of its
    outcomes, so that a resumed run can tell a row that changed since its outcome was recorded.
    ``prediction`` is its prediction once made (its answer read out, see ``JoinState.prediction``):
    the row carries it along with its judge calls, so a verdict comes back with what it judged,
    wherever the call waited (in memory, or parked on disk with a judge batch).
    """

    row_id: str
    index: int
    fields: dict[str, Any]
    labels: tuple[str, ...] | None = None
    fingerprint: str = ""
    prediction: ChatResult | None = None

    def carrying(self, prediction: ChatResult) -> Row:
        """This row with its prediction (``dataclasses.replace`` costs 7 us, on every row)."""
        return Row(self.row_id, self.index, self.fields, self.labels, self.fingerprint, prediction)


def row_fingerprint(fields: dict[str, Any], labels: tuple[str, ...] | list[str] | None) -> str:
    """A short stable hash of what a row's results depend on: its fields as the templates read
    them (text, in the dict's order) and its labels."""
    texts = [None if value is None else str(value) for value in fields.values()]
    key = json.dumps([texts, None if labels is None else list(labels)], ensure_ascii=False, separators=(",", ":"))
    return hashlib.blake2b(key.encode(), digest_size=8).hexdigest()


@dataclass(frozen=True, slots=True)
class JoinedRow:
    """A data row with its prediction and verdict: one line of ``results.parquet``.

    ``status`` is ``judged`` when both stages succeeded, else ``predict_failed``,
    ``judge_failed`` or ``skipped`` (nothing to ask) with ``error`` saying why. ``verdicts``,
    ``verdict_texts`` (each judge's answer as written), ``reasonings`` and ``scores`` hold each
    judge's (one for a single judge); ``verdict`` is their strict majority, ``score`` the mean of
    the recognised scores, ``verdict_text`` and ``reasoning`` their texts joined by `` | ``. With
    repeats, a judge's verdict is the strict majority of its repeats and its score their mean;
    ``repeat_verdicts`` and ``repeat_scores`` hold every repeat, judge by judge (empty without).
    A pairwise row's ``winner`` is ``a``, ``b`` or ``tie`` (see ``engine.judges.PairwiseJudge``)
    and ``winners`` each call's, judge by judge. With ``judge.logprobs``: ``probability`` of the
    judges' answers, the ``p_correct`` it implies and the probability-``weighted_score`` (means
    over the judges and calls that have them; see ``engine.judges.Reading``).
    """

    row_id: str
    index: int
    status: RowStatus
    fields: dict[str, Any]
    labels: tuple[str, ...] | None
    prediction: str | None
    prediction_valid: bool | None
    verdict_text: str | None
    verdict: bool | None
    ground_truth_correct: bool | None
    error: str | None = None
    predict_tokens: Usage = field(default_factory=Usage)
    judge_tokens: Usage = field(default_factory=Usage)
    predict_latency_s: float | None = None
    judge_latency_s: float | None = None
    verdicts: tuple[bool | None, ...] = ()
    verdict_texts: tuple[str | None, ...] = ()
    reasoning: str | None = None
    reasonings: tuple[str | None, ...] = ()
    score: float | None = None
    scores: tuple[float | None, ...] = ()
    repeat_verdicts: tuple[bool | None, ...] = ()
    repeat_scores: tuple[float | None, ...] = ()
    winner: str | None = None
    winners: tuple[str | None, ...] = ()
    probability: float | None = None
    p_correct: float | None = None
    weighted_score: float | None = None
