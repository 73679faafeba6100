"""A run's starting heap, kept out of the garbage collector's full passes while the run lasts.

A full collection walks every object the collector tracks. The engine's imports alone (polars,
pydantic, openai, anyio) are about 140,000 of them: some 90 ms a pass on our 2-core machine.
A batch delivery's joined rows wait for their results part and pass the young generations, so
they set off a full pass every ten thousand lines or so: measured, 0.66 s of a 50,000-line judge
batch's 5 s. ``gc.freeze`` moves what exists when a run starts into a permanent generation that
no pass walks; ``gc.unfreeze`` gives it back when the last of the process's concurrent runs ends,
so a cycle of the caller's that became garbage meanwhile is collected then.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_runs = 0  # runs of this process inside ``frozen_heap`` now


@contextmanager
def frozen_heap() -> Iterator[None]:
    """Freeze the heap as it is (again, for a run that starts beside another); unfreeze it when
    the last run leaves."""
    global _runs
    with _lock:
        gc.freeze()
        _runs += 1
    try:
        yield
    finally:
        with _lock:
            _runs -= 1
            if _runs == 0:
                gc.unfreeze()
