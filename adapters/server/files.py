"""Uploaded and produced files on disk, for the Files API and the batch executor.

``<root>/<id>`` holds a file's bytes and ``<root>/<id>.json`` its record. An id must match
``file-[A-Za-z0-9]+`` before any path is built from it, so no id can name another path. Records
are written atomically (a temporary file, then ``os.replace``) and indexed in memory when the
store opens; uploads stream to a temporary file in ``<root>`` and are moved into place whole.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

__all__ = ["FILE_ID", "FileStore", "StoredFile", "UploadTooLarge", "atomic_write"]

FILE_ID = re.compile(r"file-[A-Za-z0-9]+")
_PARTIAL_PREFIX = ".upload-"


@dataclass(frozen=True, slots=True)
class StoredFile:
    """A file's record; ``created`` (float seconds) orders files created in the same second."""

    id: str
    bytes: int
    created_at: int
    filename: str
    purpose: str
    created: float

    def to_openai(self) -> dict[str, Any]:
        """OpenAI's ``file`` object."""
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
            "expires_at": None,
        }


class UploadTooLarge(Exception):
    """An upload went over the store's byte limit; nothing of it was kept."""


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so a reader sees the old or the new bytes, never a mix."""
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    with open(temp, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temp, path)


class FileStore:
    """The files under ``root``; :meth:`open` before use."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._index: dict[str, StoredFile] = {}

    async def open(self) -> None:
        """Create ``root`` if needed, drop leftovers of interrupted writes, and load the records."""
        self._index = await anyio.to_thread.run_sync(self._load)

    def get(self, file_id: str) -> StoredFile | None:
        """The record for ``file_id``, or None (also for any id that is not a file id)."""
        return self._index.get(file_id) if FILE_ID.fullmatch(file_id) else None

    def path(self, file: StoredFile) -> Path:
        """Where ``file``'s bytes are."""
        return self.root / file.id

    def newest_first(self) -> list[StoredFile]:
        """Every file, newest first."""
        return sorted(self._index.values(), key=lambda f: (f.created, f.id), reverse=True)

    async def receive(self, chunks: AsyncIterator[bytes], max_bytes: int) -> Path:
        """Stream ``chunks`` to a temporary file in the store and return its path.

        Raises :class:`UploadTooLarge` (and removes the partial file) past ``max_bytes``. The
        caller passes the path to :meth:`add` or :meth:`discard`.
        """
        partial = self.root / f"{_PARTIAL_PREFIX}{secrets.token_hex(8)}"
        size = 0
        try:
            async with await anyio.open_file(partial, "wb") as out:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > max_bytes:
                        raise UploadTooLarge(f"the file is larger than the {max_bytes}-byte limit")
                    await out.write(chunk)
        except BaseException:
            await self.discard(partial)
            raise
        return partial

    async def discard(self, partial: Path) -> None:
        """Remove a temporary file in the store (from :meth:`receive`), if it is still there."""
        await anyio.to_thread.run_sync(lambda: partial.unlink(missing_ok=True))

    async def add(
        self, source: Path, *, filename: str, purpose: str, file_id: str | None = None
    ) -> StoredFile:
        """Move ``source`` (in the store's directory) into the store under ``file_id`` or a new id.

        An existing file with the same id is replaced, so re-adding a produced file is idempotent.
        """
        file_id = file_id or f"file-{secrets.token_hex(12)}"
        if not FILE_ID.fullmatch(file_id):
            raise ValueError(f"not a file id: {file_id!r}")
        now = time.time()

        def move() -> StoredFile:
            stored = StoredFile(file_id, source.stat().st_size, int(now), filename, purpose, now)
            os.replace(source, self.root / file_id)
            atomic_write(self.root / f"{file_id}.json", json.dumps(asdict(stored)).encode())
            return stored

        stored = await anyio.to_thread.run_sync(move)
        self._index[file_id] = stored
        return stored

    async def delete(self, file_id: str) -> bool:
        """Delete a file; False if there is none with that id."""
        stored = self.get(file_id)
        if stored is None:
            return False
        del self._index[file_id]

        def remove() -> None:
            (self.root / f"{file_id}.json").unlink(missing_ok=True)
            (self.root / file_id).unlink(missing_ok=True)

        await anyio.to_thread.run_sync(remove)
        return True

    def _load(self) -> dict[str, StoredFile]:
        self.root.mkdir(parents=True, exist_ok=True)
        index: dict[str, StoredFile] = {}
        for entry in self.root.iterdir():
            if entry.name.startswith("."):
                entry.unlink(missing_ok=True)  # an interrupted upload or record write
            elif entry.suffix == ".json" and FILE_ID.fullmatch(entry.stem):
                stored = StoredFile(**json.loads(entry.read_bytes()))
                if (self.root / stored.id).is_file():
                    index[stored.id] = stored
        return index
