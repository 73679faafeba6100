"""A task's rows -> ``ChatRequest``: the predict request from the predict templates, each
judge's from its judge object (``engine.judges``), in the structured-output format the endpoint
accepts (``engine.formats``). Templates are ``engine.templates``."""

from __future__ import annotations

import json
from typing import Any

from .config import StageConfig, TaskConfig
from .errors import ConfigError
from .formats import StructuredOutput, choice_format
from .judges import JUDGE_EXTRA_FIELDS, Judge, calls_of, judges_for, normalise
from .templates import Templates, estimate_tokens
from .types import ChatRequest, Row, StageName, call_prefix, caller_of

#: How many alternatives a logprobs judge asks for at each token (OpenAI allows up to 20).
LOGPROB_ALTERNATIVES = 10


class PromptBuilder:
    """Builds predict and judge requests for rows of one task."""

    def __init__(self, config: TaskConfig, columns: list[str]) -> None:
        self._config = config
        self._labels_text = ", ".join(config.labels)
        self._predict = Templates.of(config.predict, "predict.", columns, ("labels",), config.where)
        self.judges: tuple[Judge, ...] = judges_for(config, columns)
        self.judge_prefixes = tuple(judge.prefix for judge in self.judges)
        #: Every judge call of a row, by ``custom_id`` prefix: (judge index, repeat).
        self.calls = {
            call_prefix(judge.prefix, repeat): (index, repeat)
            for index, judge in enumerate(self.judges)
            for repeat in range(calls_of(judge.config))
        }
        self.formats = StructuredOutput()
        # Per constrained caller, built once: its response_format and its reply budget.
        self._constrained: dict[str, tuple[dict[str, Any], int]] = {}
        self._choices: dict[str, tuple[str, ...]] = {}
        if config.predict.constrain:
            if not config.labels:
                raise ConfigError(f"{config.where('predict.constrain')} needs the task's `labels` to choose from")
            self._constrain("predict", config.labels, config.predict.max_tokens)
        for judge in self.judges:
            if judge.response_format is not None:
                self._constrained[judge.prefix] = (judge.response_format, _budget(judge.response_format, judge.config.max_tokens))

    def _constrain(self, caller: str, choices: tuple[str, ...], max_tokens: int) -> None:
        response_format = choice_format(choices)
        self._constrained[caller] = (response_format, _budget(response_format, max_tokens))
        self._choices[caller] = choices

    def answer(self, caller: str, content: str) -> str:
        """The answer in a reply: the chosen value of a constrained reply (in whichever format
        ``engine.formats`` sent it), else the text."""
        choices = self._choices.get(caller)
        return content if choices is None else unwrap_choice(content, choices)

    def preflight(self, caller: str) -> ChatRequest:
        """A one-word request of ``caller``'s model in its structured-output format, if any: what
        a batch-mode caller sends before its batches (a rejected key, model or format shows now)."""
        stage_config = self._config.predict if caller == "predict" else self.judges[self.judge_prefixes.index(caller)].config
        body: dict[str, Any] = {"model": stage_config.model, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}
        constrained = self._constrained.get(caller)
        if constrained is not None:
            body["response_format"], body["max_tokens"] = constrained
        request = ChatRequest(f"{caller}:preflight", "preflight", "predict" if caller == "predict" else "judge", body,
                              estimated_tokens=estimate_tokens(body["messages"], body["max_tokens"]))
        return self.formats.current(request)

    @property
    def call_prefixes(self) -> tuple[str, ...]:
        """The ``custom_id`` prefix of every judge call of a row, judge by judge, repeats in order."""
        return tuple(self.calls)

    @property
    def callers(self) -> tuple[str, ...]:
        """``predict`` and each judge's ``custom_id`` prefix."""
        return ("predict", *self.judge_prefixes)

    @property
    def template_fields(self) -> frozenset[str]:
        """Data-set columns any template reads (system prompts included)."""
        fields = set(self._predict.fields).union(*(judge.fields for judge in self.judges))
        return frozenset(fields - set(JUDGE_EXTRA_FIELDS))

    @property
    def text_fields(self) -> tuple[str, ...]:
        """Columns the predict templates read: a row with all of them empty is skipped."""
        return tuple(name for name in dict.fromkeys(self._predict.fields) if name not in JUDGE_EXTRA_FIELDS)

    def _request(
        self, stage: StageName, stage_config: StageConfig, row: Row, messages: list[dict[str, str]], prefix: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> ChatRequest:
        body: dict[str, Any] = {
            "model": stage_config.model,
            "messages": messages,
            "temperature": stage_config.temperature,
            "max_tokens": stage_config.max_tokens,
        }
        caller = caller_of(prefix or stage)
        constrained = self._constrained.get(caller)
        if constrained is not None:
            body["response_format"], body["max_tokens"] = constrained
        if stage_config.cache:
            # OpenAI routes requests with one key to one cache; an adapter for a provider that
            # caches only where told (Anthropic) marks the end of the system prompt.
            body["prompt_cache_key"] = f"{self._config.name}.{caller}"
        body.update(extra or {})
        request = ChatRequest(
            custom_id=f"{prefix or stage}:{row.row_id}",
            row_id=row.row_id,
            stage=stage,
            body=body,
            estimated_tokens=estimate_tokens(messages, body["max_tokens"]),
        )
        return self.formats.current(request)

    def predict(self, row: Row) -> ChatRequest:
        messages = self._predict.messages({**row.fields, "labels": self._labels_text})
        return self._request("predict", self._config.predict, row, messages)

    def judge(self, row: Row, prediction: str, index: int = 0, repeat: int = 0) -> ChatRequest:
        """The request of judge ``index`` of the panel (0 for a single judge), its ``repeat``-th
        call (0-based). Repeated calls carry the repeat as their ``seed``: each is its own sample
        (and its own key in a response cache). A pairwise judge's second call has the pair swapped."""
        judge = self.judges[index]
        config = judge.config
        extra: dict[str, Any] = {"seed": repeat} if config.repeats > 1 else {}
        if config.kind == "pairwise" and repeat == 1:
            prediction = swapped(prediction)
        if config.logprobs:
            extra.update(logprobs=True, top_logprobs=LOGPROB_ALTERNATIVES)
        prefix = call_prefix(judge.prefix, repeat)
        return self._request("judge", config, row, judge.messages(row, prediction), prefix=prefix, extra=extra)


def swapped(pair: str) -> str:
    """A pairwise prediction (``[A, B]`` as JSON) with its answers in the other order."""
    first, second = json.loads(pair)
    return json.dumps([second, first], ensure_ascii=False)


def _budget(response_format: dict[str, Any], max_tokens: int) -> int:
    """A constrained reply's budget: room for the whole JSON answer (a token is at least a
    character) around its longest choice."""
    schema = response_format["json_schema"]["schema"]
    choices = [str(choice) for spec in schema["properties"].values() for choice in spec.get("enum", ())]
    return max(max_tokens, 16 + max(map(len, choices), default=0))


def unwrap_choice(content: str, choices: tuple[str, ...] = ()) -> str:
    """The chosen value of a constrained reply: ``{"answer": "Drama"}`` (json_schema or
    json_object) -> ``Drama``; a plain-text reply (the prompt fallback) -> the choice it names,
    whatever its case, quotes or final full stop; anything else as it is (it counts as invalid
    unless it is an allowed answer)."""
    try:
        value = json.loads(content)
    except ValueError:
        value = content
    if isinstance(value, dict) and isinstance(value.get("answer"), str):
        value = value["answer"]
    if not isinstance(value, str):
        return content
    if value in choices:
        return value
    wanted = normalise(value)
    return next((choice for choice in choices if normalise(choice) == wanted), value)


def prediction_is_valid(prediction: str, labels: frozenset[str]) -> bool | None:
    """Exactly one of the label set (surrounding whitespace ignored); None without a label set."""
    if not labels:
        return None
    return prediction.strip() in labels
