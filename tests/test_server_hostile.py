"""Clients that send garbage, hang up mid-request or guess keys: the server stays up and quiet."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import aiohttp
import openai
import pytest
import yarl

from adapters.server.backends import SimBackend, SimSettings
from adapters.server.batch_jobs import BatchSettings
from adapters.server.embedded import embedded_server
from adapters.server.server import API_KEY_ENV, api_key_from_env

from .test_server import GENRE_SET, ask, genre_messages
from .test_server_batches import jsonl, request_line, settle, submit

KEY = "sk-server-4c0ffee-never-echo-me"
_UPLOAD_HEAD = (
    b"--B\r\n"
    b'Content-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
    b"--B\r\n"
    b'Content-Disposition: form-data; name="file"; filename="in.jsonl"\r\n'
    b"Content-Type: application/jsonl\r\n\r\n"
)


def post(path: str, body: bytes, *, length: int | None = None, content_type: str = "application/json") -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body) if length is None else length}\r\n\r\n"
    )
    return head.encode() + body


CUT_UPLOAD = post(
    "/v1/files",
    _UPLOAD_HEAD + jsonl([request_line(i) for i in range(2000)]),
    length=10_000_000,
    content_type="multipart/form-data; boundary=B",
)
HOSTILE = {
    "random bytes": bytes(range(256)) * 8 + b"\r\n\r\n",
    "partial request line": b"POST /v1/chat/comp",
    "partial headers": b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le",
    "short body": post("/v1/chat/completions", b'{"model": "m"', length=1000),
    "short batch body": post("/v1/batches", b'{"input_file_id": ', length=1000),
    "cut upload": CUT_UPLOAD,
    "cut upload in a part's headers": CUT_UPLOAD[:200],
    "oversized header": b"GET /v1/models HTTP/1.1\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
    "bad content length": b"POST /v1/files HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
}


async def send_and_hang_up(url: str, data: bytes, *, hang_up: bool = True) -> bytes:
    """Send ``data`` on a fresh connection and return whatever came back until the server closed.

    With ``hang_up`` our side stops sending at once (the server sees the end of the stream).
    """
    address = yarl.URL(url)
    assert address.host is not None and address.port is not None
    reader, writer = await asyncio.open_connection(address.host, address.port)
    try:
        writer.write(data)
        await writer.drain()
        if hang_up:
            writer.write_eof()
        return await reader.read()
    except ConnectionError:  # the server may hang up first
        return b""
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except ConnectionError:
            pass


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


@pytest.mark.parametrize("name", sorted(HOSTILE))
async def test_hostile_client_is_survived_quietly(
    name: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with embedded_server(SimBackend(SimSettings()), data_dir=tmp_path) as url:
        reply = await send_and_hang_up(url, HOSTILE[name])
        if reply:
            assert not reply.startswith(b"HTTP/1.1 5"), reply[:200]
        async with openai.AsyncOpenAI(base_url=url, api_key="test", max_retries=0) as client:
            assert await ask(client, genre_messages()) in GENRE_SET
    assert list((tmp_path / "files").iterdir()) == []  # no partial upload left behind
    assert tracebacks(caplog) == []


async def test_many_hostile_clients_at_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with embedded_server(SimBackend(SimSettings()), data_dir=tmp_path) as url:
        await asyncio.gather(*(send_and_hang_up(url, data) for data in HOSTILE.values() for _ in range(5)))
        async with openai.AsyncOpenAI(base_url=url, api_key="test", max_retries=0) as client:
            assert await ask(client, genre_messages()) in GENRE_SET
    assert list((tmp_path / "files").iterdir()) == []
    assert tracebacks(caplog) == []


async def test_form_fields_beside_the_file_are_bounded() -> None:
    big_field = b'--B\r\nContent-Disposition: form-data; name="junk"\r\n\r\n' + b"j" * 200_000 + b"\r\n"
    body = big_field + _UPLOAD_HEAD + jsonl([request_line(0)]) + b"\r\n--B--\r\n"
    nested = (
        b'--B\r\nContent-Type: multipart/mixed; boundary=C\r\nContent-Disposition: form-data; name="x"\r\n\r\n'
        b"--C\r\nContent-Type: text/plain\r\n\r\nhi\r\n--C--\r\n--B--\r\n"
    )
    headers = {"Content-Type": "multipart/form-data; boundary=B"}
    async with embedded_server(SimBackend(SimSettings())) as url, aiohttp.ClientSession() as http:
        for data, status in ((body, 413), (nested, 400)):
            async with http.post(f"{url}/files", data=data, headers=headers) as response:
                assert response.status == status
                assert set((await response.json())["error"]) == {"message", "type", "param", "code"}


async def test_an_overlong_line_fails_its_batch_without_being_read_whole() -> None:
    long_line = jsonl([request_line(1, body={"model": "m", "messages": genre_messages("x" * 5000)})])
    data = jsonl([request_line(0)]) + long_line + jsonl([request_line(2)])
    async with embedded_server(
        SimBackend(SimSettings()), batch_settings=BatchSettings(max_line_bytes=2000)
    ) as url, openai.AsyncOpenAI(base_url=url, api_key="test", max_retries=0) as client:
        batch = await settle(client, (await submit(client, data)).id)
    assert batch.status == "failed" and batch.errors is not None and batch.errors.data is not None
    assert [(e.code, e.line) for e in batch.errors.data] == [("line_too_large", 2)]


async def test_the_key_is_never_logged_or_echoed(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    wrong_keys = ("", KEY[:-1], KEY + "x", KEY.upper(), "Basic " + KEY)
    async with embedded_server(SimBackend(SimSettings(error_rate=0.5)), api_key=KEY) as url:
        async with aiohttp.ClientSession() as http:
            for key in (*wrong_keys, KEY):
                headers = {"Authorization": key if key.startswith("Basic") else f"Bearer {key}"}
                for method, path, body in (
                    ("GET", "/models", None),
                    ("POST", "/chat/completions", {"model": "m", "messages": genre_messages()}),
                    ("POST", "/chat/completions", {"model": "m"}),
                    ("GET", "/files/file-nope", None),
                    ("GET", "/nowhere", None),
                ):
                    async with http.request(method, url + path, json=body, headers=headers) as response:
                        text = await response.text()
                    assert KEY[:-1] not in text + str(response.headers)
                    if key != KEY:
                        assert response.status == 401 and (await response.json())["error"]["param"] is None
        not_utf8 = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer \xff\r\n\r\n"
        assert (await send_and_hang_up(url, not_utf8, hang_up=False)).startswith(b"HTTP/1.1 401")
    logged = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert KEY[:-1] not in logged
    assert tracebacks(caplog) == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), ("", None), ("   ", None), (f"  {KEY}\n", KEY)],
)
def test_api_key_from_env(monkeypatch: pytest.MonkeyPatch, value: str | None, expected: str | None) -> None:
    if value is None:
        monkeypatch.delenv(API_KEY_ENV, raising=False)
    else:
        monkeypatch.setenv(API_KEY_ENV, value)
    assert api_key_from_env() == expected


def test_api_key_from_env_names_the_variable_never_the_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MY_SERVER_KEY", raising=False)
    with pytest.raises(ValueError, match=r"\$MY_SERVER_KEY is not set"):
        api_key_from_env("MY_SERVER_KEY", required=True)
    monkeypatch.setenv("MY_SERVER_KEY", "sk-sécret\x07")
    with pytest.raises(ValueError, match=r"\$MY_SERVER_KEY must be printable ASCII") as caught:
        api_key_from_env("MY_SERVER_KEY")
    assert "sécret" not in str(caught.value)
    monkeypatch.setenv("MY_SERVER_KEY", KEY)
    assert api_key_from_env("MY_SERVER_KEY", required=True) == KEY
