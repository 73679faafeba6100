"""Rows parked on disk while they wait for a batch, so a run holds none of them in memory.

A batch stage may have every row of a run waiting in its batches at once (a million rows in 20
files), each judge call's row carrying its prediction. ``Parked`` is
the mapping they wait in: keys are ids, values are pickled into an SQLite file of the run
directory's scratch space (``RunDir.scratch_dir``). Nothing in it outlives the session: a
resumed run feeds its owed rows again, so the file is created empty, never synced (no rollback
journal, no fsync) and removed on ``close``. SQLite keeps a few MB of pages in memory whatever
the number of rows.
"""

from __future__ import annotations

import io
import itertools
import pickle
import sqlite3
from collections.abc import Iterable, Iterator, MutableMapping
from pathlib import Path
from typing import Any, Generic, TypeVar, overload

from ..types import ChatResult, Failure, Row, TokenLogprob, Usage

V = TypeVar("V")
T = TypeVar("T")

_MISSING = object()
_KEYS_A_STATEMENT = 500  # well under SQLite's limit on a statement's parameters


class Parked(MutableMapping[str, V], Generic[V]):
    """A ``str`` to picklable-value mapping in an SQLite file at ``path`` (replaced if it exists)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)  # left by a session that was killed: nothing in it is owed
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None)
        for pragma in ("journal_mode = OFF", "synchronous = OFF", "locking_mode = EXCLUSIVE", "temp_store = FILE"):
            self._db.execute(f"PRAGMA {pragma}")
        self._db.execute("CREATE TABLE parked (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID")

    def __setitem__(self, key: str, value: V) -> None:
        self._db.execute("INSERT OR REPLACE INTO parked VALUES (?, ?)", (key, _dumps(value)))

    def __getitem__(self, key: str) -> V:
        found = self._db.execute("SELECT value FROM parked WHERE key = ?", (key,)).fetchone()
        if found is None:
            raise KeyError(key)
        value: V = _loads(found[0])
        return value

    def __delitem__(self, key: str) -> None:
        if self._db.execute("DELETE FROM parked WHERE key = ?", (key,)).rowcount == 0:
            raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return (key for (key,) in self._db.execute("SELECT key FROM parked").fetchall())

    def __len__(self) -> int:
        """A count over the file: for tests and diagnostics, not for a hot path."""
        return int(self._db.execute("SELECT COUNT(*) FROM parked").fetchone()[0])

    @overload
    def pop(self, key: str) -> V: ...
    @overload
    def pop(self, key: str, default: V) -> V: ...
    @overload
    def pop(self, key: str, default: T) -> V | T: ...

    def pop(self, key: str, default: object = _MISSING) -> object:
        """The value, removed, in one statement; ``default`` (if given) when it is not here."""
        found = self._db.execute("DELETE FROM parked WHERE key = ? RETURNING value", (key,)).fetchone()
        if found is not None:
            return _loads(found[0])
        if default is _MISSING:
            raise KeyError(key)
        return default

    def put_many(self, items: Iterable[tuple[str, V]]) -> None:
        """Park many values in one statement (a sealed batch file's rows)."""
        self._db.executemany("INSERT OR REPLACE INTO parked VALUES (?, ?)", ((key, _dumps(value)) for key, value in items))

    def take(self, keys: Iterable[str]) -> dict[str, V]:
        """The values of ``keys`` that are here, removed: the rows of one batch being delivered."""
        taken: dict[str, V] = {}
        for some in _batched(keys):
            marks = ", ".join("?" * len(some))
            for key, value in self._db.execute(f"DELETE FROM parked WHERE key IN ({marks}) RETURNING key, value", some):
                taken[key] = _loads(value)
        return taken

    def close(self) -> None:
        """Close the file and remove it (and the scratch folder, once it is empty)."""
        self._db.close()
        self.path.unlink(missing_ok=True)
        try:
            self.path.parent.rmdir()
        except OSError:
            pass  # another store of the session is still open in it


def _batched(keys: Iterable[str]) -> Iterator[tuple[str, ...]]:
    """``keys`` in tuples of at most ``_KEYS_A_STATEMENT`` (``itertools.batched`` from Python 3.12)."""
    keys = iter(keys)
    while some := tuple(itertools.islice(keys, _KEYS_A_STATEMENT)):
        yield some


def _by_fields(thing: Any) -> tuple[type, tuple[Any, ...]]:
    """A frozen slotted dataclass as its class and its fields' values (in ``__slots__``, their
    order): pickled as a call of the class, where pickle's own way reads ``dataclasses.fields``
    for every instance (a third of a delivery's time)."""
    return type(thing), tuple(getattr(thing, name) for name in thing.__slots__)


_BY_FIELDS = dict.fromkeys((Row, ChatResult, Failure, Usage, TokenLogprob), _by_fields)


def _dumps(value: object) -> bytes:
    out = io.BytesIO()
    pickler = pickle.Pickler(out, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.dispatch_table = _BY_FIELDS
    pickler.dump(value)
    return out.getvalue()


def _loads(data: bytes) -> Any:
    return pickle.loads(data)
