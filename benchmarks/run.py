"""Run every benchmark and rewrite benchmarks/RESULTS.md (``make bench``).

Each benchmark module has ``run`` (measure, return the numbers), ``report`` (markdown lines) and ``main`` (both,
then rewrite its own section of RESULTS.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import (
    ablation,
    episode_cost,
    format_cost,
    hawq_wall_time,
    search_quality,
    search_stats,
    step_overhead,
)

BENCHMARKS = (episode_cost, step_overhead, format_cost, hawq_wall_time, search_stats, search_quality, ablation)


def main() -> None:
    for benchmark in BENCHMARKS:
        print(f"== {benchmark.NAME}", flush=True)
        benchmark.main([])


if __name__ == "__main__":
    main()
