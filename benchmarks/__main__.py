"""``python -m benchmarks NAME [options]``."""

from __future__ import annotations

import sys

from . import faults, overhead

BENCHMARKS = {"faults": faults.main, "overhead": overhead.main}

if len(sys.argv) < 2 or sys.argv[1] not in BENCHMARKS:
    print(f"usage: python -m benchmarks {{{','.join(BENCHMARKS)}}} [options]", file=sys.stderr)
    raise SystemExit(2)
BENCHMARKS[sys.argv[1]](sys.argv[2:])
