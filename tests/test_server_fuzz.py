"""Property tests (hypothesis) of the embedded server: no input makes it answer 5xx or stop serving.

One server for the module, on loopback, with an API key; a plain ``http.client`` connection per
request, so a body can be any bytes. Every answer must be a 2xx, or a 4xx carrying an OpenAI
error object. Examples are derandomized and bounded, so the module runs in seconds and the same
way in every run.
"""

from __future__ import annotations

import http.client
import json
import logging
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from adapters.server.backends import SimBackend, SimSettings
from adapters.server.batch_jobs import BatchSettings
from adapters.server.embedded import EmbeddedServer
from engine.provider import TERMINAL_BATCH_STATUSES

from .test_server import genre_messages
from .test_server_batches import jsonl, request_line

KEY = "sk-fuzz-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
REAL_FILE = "<the id of an uploaded file>"

FUZZ = settings(
    max_examples=100, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


class Server:
    """The module's server: its address, and the ERROR records logged while it ran."""

    def __init__(self, url: str) -> None:
        parsed = urllib.parse.urlsplit(url)
        assert parsed.hostname is not None and parsed.port is not None
        self.host, self.port = parsed.hostname, parsed.port
        self.errors: list[logging.LogRecord] = []
        self.file_id = ""

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            connection.request(method, path, body=body, headers={**AUTH, **(headers or {})})
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def json(self, method: str, path: str, value: Any) -> tuple[int, bytes]:
        body = json.dumps(value).encode()
        return self.request(method, path, body, {"Content-Type": "application/json"})

    def upload(self, data: bytes, *, purpose: str = "batch", filename: str = "in.jsonl") -> tuple[int, bytes]:
        head = (
            f'--B\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n{purpose}\r\n'
            f'--B\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n\r\n'
        )
        body = head.encode() + data + b"\r\n--B--\r\n"
        return self.request("POST", "/v1/files", body, {"Content-Type": "multipart/form-data; boundary=B"})


class _Collect(logging.Handler):
    def __init__(self, into: list[logging.LogRecord]) -> None:
        super().__init__(logging.ERROR)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    backend = SimBackend(SimSettings(tpm=1e12))
    data_dir: Path = tmp_path_factory.mktemp("fuzz")
    embedded = EmbeddedServer(
        backend, api_key=KEY, data_dir=data_dir, max_body_bytes=1 << 20,
        batch_settings=BatchSettings(max_requests=50, max_file_bytes=1 << 20, max_line_bytes=1 << 16),
    )
    running = Server(embedded.start())
    status, uploaded = running.upload(jsonl([request_line(0)]))
    assert status == 200
    running.file_id = json.loads(uploaded)["id"]
    handler = _Collect(running.errors)
    logging.getLogger().addHandler(handler)
    try:
        yield running
    finally:
        embedded.stop()
        logging.getLogger().removeHandler(handler)


def check(status: int, body: bytes) -> Any:
    """The parsed body of a good answer: a 2xx, or a 4xx with an OpenAI error object."""
    event(f"HTTP {status}")
    assert status < 500, (status, body[:500])
    parsed = json.loads(body)
    if status >= 400:
        assert set(parsed["error"]) == {"message", "type", "param", "code"}, parsed
    return parsed


# --- strategies ---------------------------------------------------------------------------

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
big_text = st.builds(lambda c, n: c * n, st.characters(), st.integers(0, 200_000))
deep_raw = st.integers(1, 100_000).flatmap(
    lambda n: st.sampled_from(
        [
            b"[" * n + b"]" * n,
            b'{"a":' * n + b"1" + b"}" * n,
            b'{"model": "m", "messages": [{"role": "user", "content": ' + b"[" * n + b"]" * n + b"}]}",
        ]
    )
)
ids = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["..", "../..", "../../etc/passwd", "file-..", "file-a/../../x", "%2e%2e%2f", "\x00"]),
    st.from_regex(r"(file|batch)[-_][A-Za-z0-9]{0,30}", fullmatch=True),
)

text_part = st.fixed_dictionaries({"type": st.just("text"), "text": st.text()})
content = st.one_of(st.text(), big_text, st.lists(text_part, max_size=3), json_values)
roles = st.sampled_from(["system", "user", "assistant", "x"])
good_message = st.fixed_dictionaries({"role": roles, "content": content})
message = good_message | st.fixed_dictionaries({}, optional={"role": roles | json_values, "content": content})
schema = st.fixed_dictionaries(
    {}, optional={"enum": st.lists(json_values, max_size=3) | json_values, "properties": json_values}
)
json_schema = st.fixed_dictionaries({"name": st.text(max_size=5)}, optional={"schema": schema})
response_format = json_values | st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "json_object", "json_schema", "nope"])},
    optional={"json_schema": json_schema | json_values},
)


def changed(good: dict[str, Any], fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """``good`` with up to three ``fields`` changed (so most get past the first check), or just those."""
    changes = st.lists(st.sampled_from(sorted(fields)), max_size=3, unique=True).flatmap(
        lambda names: st.fixed_dictionaries({name: fields[name] for name in names})
    )
    whole = st.sampled_from([True, True, False])
    return st.builds(lambda c, w: {**good, **c} if w else c, changes, whole)


# Each field's values: mostly good ones (so the body reaches the backend), some of any type.
chat_bodies = changed(
    {"model": "m", "messages": genre_messages()},
    {
        "model": st.text(min_size=1, max_size=30) | json_values,
        "messages": st.lists(good_message, min_size=1, max_size=4) | st.lists(message, max_size=4) | json_values,
        "temperature": st.floats(0, 2) | st.floats() | json_values,
        "top_p": st.floats(0, 1) | json_values,
        "max_tokens": st.integers(1, 10_000) | st.integers() | json_values,
        "max_completion_tokens": st.integers(1, 10_000) | st.integers(),
        "response_format": response_format,
        "stream": st.just(False) | json_values.filter(lambda value: value is not True),  # a stream is not one JSON body
        "n": st.just(1) | json_values,
        "seed": st.integers() | json_values,
    },
)
batch_bodies = changed(
    {"input_file_id": REAL_FILE, "endpoint": "/v1/chat/completions", "completion_window": "24h"},
    {
        "input_file_id": ids | json_values,
        "endpoint": st.sampled_from(["/v1/chat/completions", "/v1/embeddings", ""]) | json_values,
        "completion_window": st.sampled_from(["24h", "1h"]) | json_values,
        "metadata": json_values
        | st.dictionaries(st.text(max_size=70), st.text(max_size=600) | json_values, max_size=20),
    },
)
jsonl_lines = st.one_of(
    st.integers(0, 10_000).map(lambda i: json.dumps(request_line(i)).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=60),
    deep_raw,
    st.builds(
        lambda i, changes: json.dumps(request_line(i, **changes)).encode(),
        st.integers(0, 50),
        st.dictionaries(st.sampled_from(["custom_id", "method", "url", "body"]), json_values, max_size=2),
    ),
    st.builds(lambda i, body: json.dumps(request_line(i, body=body)).encode(), st.integers(0, 50), chat_bodies),
)
header_values = (st.text(max_size=30) | st.binary(max_size=30).map(lambda b: b.decode("latin-1"))).filter(
    lambda text: all(c == "\t" or " " <= c <= "~" or "\x80" <= c <= "\xff" for c in text)  # RFC 9110
)


# --- properties ---------------------------------------------------------------------------


@settings(FUZZ, max_examples=300)
@given(body=chat_bodies)
def test_chat_completion_bodies(server: Server, body: dict[str, Any]) -> None:
    status, raw = server.json("POST", "/v1/chat/completions", body)
    reply = check(status, raw)
    if status == 200:
        assert reply["object"] == "chat.completion" and reply["model"].startswith("sim:")


@FUZZ
@given(value=json_values | big_text)
def test_chat_completion_any_json(server: Server, value: Any) -> None:
    check(*server.json("POST", "/v1/chat/completions", value))


@FUZZ
@given(
    raw=st.binary(max_size=2000) | deep_raw,
    content_type=st.sampled_from(["application/json", "text/plain", "", "multipart/form-data; boundary=x"]),
)
def test_raw_bodies_everywhere(server: Server, raw: bytes, content_type: str) -> None:
    for path in ("/v1/chat/completions", "/v1/batches", "/v1/files"):
        check(*server.request("POST", path, raw, {"Content-Type": content_type} if content_type else {}))


@FUZZ
@given(body=batch_bodies)
def test_create_batch_bodies(server: Server, body: dict[str, Any]) -> None:
    if body.get("input_file_id") == REAL_FILE:
        body["input_file_id"] = server.file_id
    check(*server.json("POST", "/v1/batches", body))


@FUZZ
@given(
    some_id=ids,
    safe=st.sampled_from(["", "/", "/%", "/%.:@"]),
    route=st.sampled_from(
        [
            ("GET", "/v1/files/{}"),
            ("DELETE", "/v1/files/{}"),
            ("GET", "/v1/files/{}/content"),
            ("GET", "/v1/batches/{}"),
            ("POST", "/v1/batches/{}/cancel"),
        ]
    ),
)
def test_ids_in_paths(server: Server, some_id: str, safe: str, route: tuple[str, str]) -> None:
    method, template = route
    status, raw = server.request(method, template.format(urllib.parse.quote(some_id, safe=safe)))
    check(status, raw)


@FUZZ
@given(
    path=st.sampled_from(["/v1/files", "/v1/batches"]),
    query=st.dictionaries(
        st.sampled_from(["limit", "after", "purpose", "x"]), st.text(max_size=12) | st.integers().map(str)
    ),
)
def test_list_queries(server: Server, path: str, query: dict[str, str]) -> None:
    check(*server.request("GET", f"{path}?{urllib.parse.urlencode(query)}"))


@FUZZ
@given(key=header_values)
def test_authorization_headers(server: Server, key: str) -> None:
    status, raw = server.request("GET", "/v1/models", headers={"Authorization": key})
    check(status, raw)
    assert status == (200 if key.strip(" \t") == f"Bearer {KEY}" else 401)


@settings(FUZZ, max_examples=40)
@given(lines=st.lists(st.tuples(jsonl_lines, st.sampled_from([b"\n", b"\r\n", b"\n\n"])), max_size=8))
def test_uploaded_jsonl_lines(server: Server, lines: list[tuple[bytes, bytes]]) -> None:
    uploaded = check(*server.upload(b"".join(line + end for line, end in lines)))
    good = {"input_file_id": uploaded["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    created = check(*server.json("POST", "/v1/batches", good))
    deadline = time.monotonic() + 300  # a hang guard, not a speed limit
    while (batch := check(*server.request("GET", f"/v1/batches/{created['id']}")))["status"] not in TERMINAL_BATCH_STATUSES:
        assert time.monotonic() < deadline, batch
        time.sleep(0.002)
    assert batch["status"] in ("completed", "failed")
    assert "internal_error" not in {error["code"] for error in (batch["errors"] or {"data": []})["data"]}
    for file_id in (batch["output_file_id"], batch["error_file_id"]):
        if file_id is not None:
            status, raw = server.request("GET", f"/v1/files/{file_id}/content")
            assert status == 200 and all(json.loads(line)["custom_id"] for line in raw.splitlines())


@FUZZ
@given(
    purpose=st.text(max_size=20) | st.just("batch"),
    filename=st.text(max_size=30),
    data=st.binary(max_size=300),
)
def test_upload_form_fields(server: Server, purpose: str, filename: str, data: bytes) -> None:
    check(*server.upload(data, purpose=purpose, filename=filename))


def test_the_server_still_serves_and_logged_no_error(server: Server) -> None:
    status, raw = server.json("POST", "/v1/chat/completions", {"model": "m", "messages": genre_messages()})
    assert status == 200 and json.loads(raw)["choices"][0]["message"]["content"]
    assert [record.getMessage() for record in server.errors] == []
