"""JSON on the engine's per-line paths: orjson, with the standard library where orjson refuses.

A batch delivery parses every result line and journals every outcome; a realtime call encodes
its body and parses its reply. The standard library takes 5-6 us for each of those on a judge's
line, orjson 0.5-2 (measured on the sim's result lines and the journal's records). Where orjson
refuses what the standard library accepts (an escaped lone surrogate, ``NaN``), the standard
library does the work. What still differs: no whitespace between items; ``NaN`` and infinities are
written as ``null`` (the standard library writes ``NaN``, which JSON does not have); an integer
beyond 64 bits is read as a float (no count or status the engine reads comes near).
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def loads(data: str | bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def dumps(value: Any) -> bytes:
    """``value`` as UTF-8 JSON (not escaped to ASCII)."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        return json.dumps(value, ensure_ascii=False).encode()
