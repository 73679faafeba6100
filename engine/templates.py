"""Prompt templates: ``{field}`` placeholders filled from a row in a single pass.

Templates use ``{field}`` placeholders and ``{{`` / ``}}`` for literal braces, like
``str.format``, but substitution is a single pass over the template: braces inside row text or
inside a prediction fed to the judge are copied verbatim and can never be read as placeholders.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .config import StageConfig
from .errors import ConfigError

_TOKEN = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_ -]*)\}|\{|\}")

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
        for name, literal in zip(self.fields, self.parts[1:], strict=True):
            value = values[name]
            out.append("" if value is None else str(value))
            out.append(literal)
        return "".join(out)


@dataclass(frozen=True, slots=True)
class Templates:
    """A stage's two templates: the system prompt (empty: no system message) and the user message."""

    system: Template
    user: Template

    @property
    def fields(self) -> tuple[str, ...]:
        return self.system.fields + self.user.fields

    @classmethod
    def of(
        cls, stage: StageConfig, name: str, columns: list[str], extra: tuple[str, ...], where: Callable[[str], str]
    ) -> Templates:
        """A stage's system prompt and user template, parsed and checked against the data set's
        ``columns`` (and the ``extra`` fields the stage fills in); ``name`` prefixes the setting
        in messages (``predict.`` or ``judge <name>: ``), ``where`` names the file it came from."""
        parsed = []
        for field in ("system_prompt", "user_template"):
            at = where(name + field)
            template = Template.parse(getattr(stage, field), where=at)
            _check_fields(template, at, columns, extra)
            parsed.append(template)
        return cls(*parsed)

    def messages(self, values: dict[str, Any]) -> list[dict[str, str]]:
        messages = [{"role": "system", "content": self.system.render(values)}] if self.system.source else []
        return [*messages, {"role": "user", "content": self.user.render(values)}]


def estimate_tokens(messages: list[dict[str, str]], max_tokens: int) -> int:
    """Tokens a call may cost, without a tokenizer: about 4 characters a token, plus the reply
    budget. Deliberately generous; ``usage`` corrects it after the call."""
    characters = sum(len(message["content"]) for message in messages)
    return characters // 4 + 4 * len(messages) + 3 + max_tokens


def _check_fields(template: Template, where: str, columns: list[str], extra: tuple[str, ...]) -> None:
    known = set(columns) | set(extra)
    for name in template.fields:
        if name not in known:
            raise ConfigError(
                f"{where}: placeholder {{{name}}} is not a column of the data set "
                f"(columns: {', '.join(columns)}; also allowed: {', '.join(extra)})"
            )
