"""``python -m benchmarks NAME [options]``."""

from __future__ import annotations

import sys

from . import faults, fixed_cost, limiter, memory, overhead, providers, realtime_vs_batch

BENCHMARKS = {
    "faults": faults.main,
    "fixed-cost": fixed_cost.main,
    "limiter": limiter.main,
    "memory": memory.main,
    "overhead": overhead.main,
    "providers": providers.main,
    "realtime-vs-batch": realtime_vs_batch.main,
}

if len(sys.argv) < 2 or sys.argv[1] not in BENCHMARKS:
    print(f"usage: python -m benchmarks {{{','.join(BENCHMARKS)}}} [options]", file=sys.stderr)
    raise SystemExit(2)
BENCHMARKS[sys.argv[1]](sys.argv[2:])
