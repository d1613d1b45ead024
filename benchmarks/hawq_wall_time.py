"""hawq's wall time against random search at the same number of evaluations, on digits.

Both run the default search (digits CNN, Bit Fusion latency, budget 0.5, seed 0) through ``run_search`` for the
same number of episodes, one torch thread, in this process (the digits CNN already trained); the searches are
timed interleaved over the repeats and compared by the median of the per-round ratio. Wall time includes what
both share (building the problem, the held-out scores of the best policy and of the uniform baselines) and what
hawq adds (Hessian traces, then its ranked ILP solutions). Target (issue 16): hawq <= 2x random.

Run: ``python benchmarks/hawq_wall_time.py [--episodes N] [--repeats N]``; it rewrites its section of
``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import (
    Writer,
    interleaved,
    machine,
    machine_lines,
    paired_ratio,
    publish,
    table,
    verdict,
    write_section,
)
from mpq_rl.config import load_config

NAME = "hawq_wall_time"
TARGET = 2.0
BEFORE = (
    "Before hawq's ranked solutions (commit 45a0c69: one MILP per solution with no-good cuts, HiGHS), the same "
    "run (150 episodes, one repeat) measured hawq 140.3 s against random 22.9 s: **6.12x** (load 1.7 to 5.5)."
)
AGENTS = ("random", "hawq")


def _search(agent: str, episodes: int, evaluations: dict[str, int]) -> None:
    from mpq_rl.runs.trainer import run_search

    with tempfile.TemporaryDirectory() as scratch:
        overrides = {"agent.name": agent, "agent.episodes": episodes, "output": str(Path(scratch) / agent)}
        result = run_search(load_config().with_overrides(**overrides), progress=False)
    evaluations[agent] = result.evaluations


def run(episodes: int = 150, repeats: int = 3) -> dict[str, Any]:
    torch.set_num_threads(1)
    info = machine()
    evaluations: dict[str, int] = {}
    times = interleaved({a: (lambda a=a: _search(a, episodes, evaluations)) for a in AGENTS}, repeats)
    return {
        "machine": info,
        "end_load": machine()["load_average"],
        "episodes": episodes,
        "evaluations": evaluations,
        "seconds": times,
        "ratio": paired_ratio(times["hawq"], times["random"]),
    }


def report(outcome: dict[str, Any]) -> list[str]:
    rows = [
        [a, outcome["episodes"], outcome["evaluations"][a], f"{statistics.median(outcome['seconds'][a]):.1f}"]
        for a in AGENTS
    ]
    ratio = outcome["ratio"]
    return [
        "## hawq against random search: wall time at equal evaluations (digits)",
        "",
        "The default search through `run_search`, one torch thread, interleaved repeats; the ratio is the median of "
        "the per-round ratios.",
        "",
        *machine_lines(outcome["machine"], outcome["end_load"]),
        "",
        *table(["agent", "episodes", "evaluations", "median wall s"], rows),
        "",
        f"hawq / random: **{ratio:.2f}x** (target <= {TARGET}x: {verdict(ratio, TARGET, at_most=True)})",
        "",
        BEFORE,
    ]


def main(argv: Sequence[str] | None = None, write: Writer = write_section) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    outcome = run(args.episodes, args.repeats)
    publish(NAME, report(outcome), write)
    return outcome


if __name__ == "__main__":
    main()
