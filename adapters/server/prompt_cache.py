"""A provider's prompt cache, as the embedded server reports it: prefixes it has seen before.

Providers discount a prompt's prefix that an earlier request already sent, and say how much of
the prompt it was. OpenAI does it by itself (``automatic``): prompts of at least 1,024 tokens,
cached in steps of 128 tokens, reported as ``prompt_tokens_details.cached_tokens``. Anthropic
caches where a request marks a breakpoint with ``cache_control`` (``explicit``): the prefix up to
a breakpoint seen before is read (``cache_read_input_tokens``), one not seen yet is written
(``cache_creation_input_tokens``); prefixes under 1,024 tokens are not cached.

The server has only the backend's count of a prompt's tokens, so a prefix's tokens are that count
shared out by characters. The cache holds hashes of prefixes, the least recently used dropped
past ``capacity``; a restart empties it, as a provider's cache expires.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

MIN_CACHED_TOKENS = 1024
CACHE_STEP_TOKENS = 128
CHARS_PER_TOKEN = 4  # the sim's count; where prefixes are cut


@dataclass(frozen=True, slots=True)
class CacheUse:
    """How much of one prompt the cache served (``read``) and took in (``written``), in tokens."""

    read: int = 0
    written: int = 0


class PromptCache:
    """Prompt prefixes this server has seen; see the module doc for the two rules."""

    def __init__(self, capacity: int = 200_000) -> None:
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self._capacity = capacity

    def automatic(self, segments: Sequence[str], prompt_tokens: int) -> CacheUse:
        """OpenAI's rule: the longest prefix seen before, of at least 1,024 tokens, in 128-token
        steps; every such prefix of this prompt is remembered.

        Prefixes are cut at fixed character steps (``CHARS_PER_TOKEN`` a token), so two prompts
        that share a prefix share its cuts whatever their lengths; the prefix found is then
        counted in this prompt's tokens, down to a whole step."""
        text = "".join(segments)
        if prompt_tokens < MIN_CACHED_TOKENS or not text:
            return CacheUse()
        seen = 0
        for end in range(MIN_CACHED_TOKENS * CHARS_PER_TOKEN, len(text) + 1, CACHE_STEP_TOKENS * CHARS_PER_TOKEN):
            if self._saw(text[:end]):
                seen = end
        tokens = min(prompt_tokens, round(seen * prompt_tokens / len(text)))
        if tokens < MIN_CACHED_TOKENS:
            return CacheUse()
        return CacheUse(read=MIN_CACHED_TOKENS + (tokens - MIN_CACHED_TOKENS) // CACHE_STEP_TOKENS * CACHE_STEP_TOKENS)

    def explicit(self, segments: Sequence[tuple[str, bool]], prompt_tokens: int) -> CacheUse:
        """Anthropic's rule: ``segments`` in prompt order, each with whether a breakpoint follows
        it. ``read``: the tokens up to the last breakpoint whose prefix was seen before;
        ``written``: those after it up to the last breakpoint, when that prefix is new."""
        text = "".join(segment for segment, _ in segments)
        if not text:
            return CacheUse()
        per_char = prompt_tokens / len(text)
        read = last = 0
        end = 0
        for segment, breakpoint in segments:
            end += len(segment)
            tokens = round(end * per_char)
            if not breakpoint or tokens < MIN_CACHED_TOKENS:
                continue
            last = tokens
            if self._saw(text[:end]):
                read = tokens
        return CacheUse(read=read, written=last - read)

    def _saw(self, prefix: str) -> bool:
        """Whether ``prefix`` was seen before; it is remembered from now on either way."""
        key = hashlib.blake2b(prefix.encode(), digest_size=16).digest()
        seen = key in self._seen
        self._seen[key] = None
        self._seen.move_to_end(key)
        if len(self._seen) > self._capacity:
            self._seen.popitem(last=False)
        return seen


def chat_segments(messages: list[dict[str, Any]]) -> list[str]:
    """A chat body's messages as the text a prompt cache sees, one segment per message."""
    return [f"{message.get('role')}\n{_text(message.get('content'))}\n" for message in messages]


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""
