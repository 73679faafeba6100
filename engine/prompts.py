"""Prompt templates -> ``ChatRequest``.

Templates use ``{field}`` placeholders and ``{{`` / ``}}`` for literal braces, like
``str.format``, but substitution is a single pass over the template: braces inside row text or
inside a prediction fed to the judge are copied verbatim and can never be read as placeholders.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from .config import StageConfig, TaskConfig, VerdictConfig
from .errors import ConfigError
from .formats import StructuredOutput, choice_format
from .types import ChatRequest, Row, StageName

_TOKEN = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_ -]*)\}|\{|\}")

#: Fields the judge template may use besides the row's own columns.
JUDGE_EXTRA_FIELDS = ("prediction", "labels")


@dataclass(frozen=True, slots=True)
class Template:
    """A parsed template: literal chunks alternating with field names."""

    source: str
    parts: tuple[str, ...]
    fields: tuple[str, ...]

    @classmethod
    def parse(cls, source: str, *, where: str) -> Template:
        parts: list[str] = []
        fields: list[str] = []
        literal: list[str] = []
        position = 0
        for match in _TOKEN.finditer(source):
            literal.append(source[position : match.start()])
            position = match.end()
            token = match.group(0)
            if token in ("{{", "}}"):
                literal.append(token[0])
            elif match.group(1) is not None:
                parts.append("".join(literal))
                literal = []
                fields.append(match.group(1))
            else:
                raise ConfigError(
                    f"{where}: unmatched '{token}' at character {match.start()}; "
                    "write {{ or }} for a literal brace"
                )
        literal.append(source[position:])
        parts.append("".join(literal))
        return cls(source, tuple(parts), tuple(fields))

    def render(self, values: dict[str, Any]) -> str:
        out = [self.parts[0]]
        for name, literal in zip(self.fields, self.parts[1:]):
            value = values[name]
            out.append("" if value is None else str(value))
            out.append(literal)
        return "".join(out)


@dataclass(frozen=True, slots=True)
class _Templates:
    """A stage's two templates: the system prompt (empty: no system message) and the user message."""

    system: Template
    user: Template

    @property
    def fields(self) -> tuple[str, ...]:
        return self.system.fields + self.user.fields

    def messages(self, values: dict[str, Any]) -> list[dict[str, str]]:
        messages = [{"role": "system", "content": self.system.render(values)}] if self.system.source else []
        return [*messages, {"role": "user", "content": self.user.render(values)}]


def estimate_tokens(messages: list[dict[str, str]], max_tokens: int) -> int:
    """Tokens a call may cost, without a tokenizer: about 4 characters a token, plus the reply
    budget. Deliberately generous; ``usage`` corrects it after the call."""
    characters = sum(len(message["content"]) for message in messages)
    return characters // 4 + 4 * len(messages) + 3 + max_tokens


class PromptBuilder:
    """Builds predict and judge requests for rows of one task."""

    def __init__(self, config: TaskConfig, columns: list[str]) -> None:
        self._config = config
        self._labels_text = ", ".join(config.labels)
        self._predict = self._templates(config.predict, "predict.", columns, extra=("labels",))
        self._judges = [
            self._templates(judge, "judge." if judge.name is None else f"judge {judge.name}: ", columns, extra=JUDGE_EXTRA_FIELDS)
            for judge in config.judges
        ]
        self.judge_prefixes = judge_prefixes(config)
        self.formats = StructuredOutput()
        # Per constrained caller, built once: its response_format and its reply budget, with room
        # for the whole JSON answer (a token is at least a character).
        self._constrained: dict[str, tuple[dict[str, Any], int]] = {}
        self._choices: dict[str, tuple[str, ...]] = {}
        if config.predict.constrain:
            if not config.labels:
                raise ConfigError(f"{config.where('predict.constrain')} needs the task's `labels` to choose from")
            self._constrain("predict", config.labels, config.predict.max_tokens)
        for prefix, judge in zip(self.judge_prefixes, config.judges):
            if judge.constrain:
                self._constrain(prefix, judge.verdicts.correct + judge.verdicts.incorrect, judge.max_tokens)

    def _templates(self, stage: StageConfig, name: str, columns: list[str], extra: tuple[str, ...]) -> _Templates:
        """A stage's system prompt and user template, parsed and checked against the columns;
        ``name`` prefixes the field in messages (``predict.`` or ``judge <name>: ``)."""
        parsed = []
        for field in ("system_prompt", "user_template"):
            where = self._config.where(name + field)
            template = Template.parse(getattr(stage, field), where=where)
            self._check_fields(template, where, columns, extra)
            parsed.append(template)
        return _Templates(*parsed)

    def _constrain(self, caller: str, choices: tuple[str, ...], max_tokens: int) -> None:
        self._constrained[caller] = (choice_format(choices), max(max_tokens, 16 + max(map(len, choices))))
        self._choices[caller] = choices

    def answer(self, caller: str, content: str) -> str:
        """The answer in a reply: the chosen value of a constrained reply (in whichever format
        ``engine.formats`` sent it), else the text."""
        choices = self._choices.get(caller)
        return content if choices is None else unwrap_choice(content, choices)

    def preflight(self, caller: str) -> ChatRequest:
        """A one-word request of ``caller``'s model in its structured-output format, if any: what
        a batch-mode caller sends before its batches (a rejected key, model or format shows now)."""
        stage_config = self._config.predict if caller == "predict" else self._config.judges[self.judge_prefixes.index(caller)]
        body: dict[str, Any] = {"model": stage_config.model, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}
        constrained = self._constrained.get(caller)
        if constrained is not None:
            body["response_format"], body["max_tokens"] = constrained
        request = ChatRequest(f"{caller}:preflight", "preflight", "predict" if caller == "predict" else "judge", body,
                              estimated_tokens=estimate_tokens(body["messages"], body["max_tokens"]))
        return self.formats.current(request)

    @property
    def callers(self) -> tuple[str, ...]:
        """``predict`` and each judge's ``custom_id`` prefix."""
        return ("predict", *self.judge_prefixes)

    @staticmethod
    def _check_fields(template: Template, where: str, columns: list[str], extra: tuple[str, ...]) -> None:
        known = set(columns) | set(extra)
        for name in template.fields:
            if name not in known:
                raise ConfigError(
                    f"{where}: placeholder {{{name}}} is not a column of the data set "
                    f"(columns: {', '.join(columns)}; also allowed: {', '.join(extra)})"
                )

    @property
    def template_fields(self) -> frozenset[str]:
        """Data-set columns any template reads (system prompts included)."""
        fields = set(self._predict.fields).union(*(templates.fields for templates in self._judges))
        return frozenset(fields - set(JUDGE_EXTRA_FIELDS))

    @property
    def text_fields(self) -> tuple[str, ...]:
        """Columns the predict templates read: a row with all of them empty is skipped."""
        return tuple(name for name in dict.fromkeys(self._predict.fields) if name not in JUDGE_EXTRA_FIELDS)

    def _request(
        self, stage: StageName, stage_config: StageConfig, row: Row, messages: list[dict[str, str]], prefix: str | None = None
    ) -> ChatRequest:
        body: dict[str, Any] = {
            "model": stage_config.model,
            "messages": messages,
            "temperature": stage_config.temperature,
            "max_tokens": stage_config.max_tokens,
        }
        constrained = self._constrained.get(prefix or stage)
        if constrained is not None:
            body["response_format"], body["max_tokens"] = constrained
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

    def judge(self, row: Row, prediction: str, index: int = 0) -> ChatRequest:
        """The request of judge ``index`` of the panel (0 for a single judge)."""
        values = {**row.fields, "labels": self._labels_text, "prediction": prediction}
        messages = self._judges[index].messages(values)
        return self._request("judge", self._config.judges[index], row, messages, prefix=self.judge_prefixes[index])


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
    wanted = _normalise(value)
    return next((choice for choice in choices if _normalise(choice) == wanted), value)


def judge_prefixes(config: TaskConfig) -> tuple[str, ...]:
    """The ``custom_id`` prefix of each judge: ``judge`` alone, ``judge.<name>`` in a panel."""
    if len(config.judges) == 1:
        return ("judge",)
    return tuple(f"judge.{judge.name}" for judge in config.judges)


def judge_index(custom_id: str, prefixes: tuple[str, ...]) -> int:
    return prefixes.index(custom_id.partition(":")[0])


def _normalise(text: str) -> str:
    """Case, surrounding whitespace, quotes and backticks, and one final full stop (inside or
    outside the quotes) do not matter; ``correct...`` keeps its dots (an ellipsis is not a full stop)."""
    text = text.strip()
    stopped = text.endswith(".")
    text = text.removesuffix(".").strip().strip("\"'`").strip()
    if not stopped:
        text = text.removesuffix(".").strip()
    return text.lower()


class VerdictParser:
    """Maps judge text to True (correct), False (incorrect) or None (not recognised)."""

    def __init__(self, config: VerdictConfig) -> None:
        self._map = {_normalise(text): True for text in config.correct}
        self._map.update({_normalise(text): False for text in config.incorrect})

    def __call__(self, text: str) -> bool | None:
        return self._map.get(_normalise(text))


def prediction_is_valid(prediction: str, labels: frozenset[str]) -> bool | None:
    """Exactly one of the label set (surrounding whitespace ignored); None without a label set."""
    if not labels:
        return None
    return prediction.strip() in labels
