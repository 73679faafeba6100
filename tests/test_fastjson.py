"""``engine.fastjson`` reads and writes what the standard library does, orjson's refusals included."""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from engine import fastjson

_NUMBERS = st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False, allow_infinity=False)  # what orjson reads as such
_SCALARS = st.none() | st.booleans() | _NUMBERS | st.text()
_VALUES = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
                       max_leaves=12)


@given(_VALUES)
def test_what_the_standard_library_writes_reads_back_the_same(value: Any) -> None:
    text = json.dumps(value)  # escaped lone surrogates among them: orjson refuses them
    assert fastjson.loads(text) == json.loads(text)
    assert fastjson.loads(text.encode()) == json.loads(text)


@given(_VALUES)
def test_what_it_writes_reads_as_the_value(value: Any) -> None:
    try:
        expected = json.dumps(value, ensure_ascii=False).encode()
    except UnicodeEncodeError:  # a lone surrogate: not UTF-8, whoever writes it
        return
    assert json.loads(fastjson.dumps(value)) == json.loads(expected)


def test_orjsons_refusals_are_read_and_written_as_before() -> None:
    assert fastjson.loads('"\\ud800"') == "\ud800"  # an escaped lone surrogate
    assert math.isnan(fastjson.loads('{"a": NaN}')["a"])
    assert fastjson.dumps({"n": 2**70}) == b'{"n": 1180591620717411303424}'


def test_what_differs_from_the_standard_library() -> None:
    assert fastjson.dumps([math.nan, math.inf]) == b"[null,null]"  # JSON has no NaN
    assert fastjson.loads("123456789012345678901234567890") == 1.2345678901234568e29
    assert fastjson.dumps({"text": "caf\u00e9 \u2014 \U0001f600"}) == '{"text":"café — 😀"}'.encode()
