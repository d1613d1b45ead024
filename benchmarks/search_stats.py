"""Evaluator cache hit rate, peak memory and episodes per second of whole searches on digits, 1 vs 2 processes.

Each search runs in a fresh process, so its peak resident memory (``ru_maxrss``, of the main process) is the
search's own: model, data, cached quantized tensors, replay buffer and the evaluator cache. With ``n_envs: 2`` the
RL agents step two environments in worker processes and the baselines score two policies at a time.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import Writer, machine, machine_lines, publish, table, write_section
from mpq_rl.config import load_config

NAME = "search_stats"
HEADER = ["agent", "n_envs", "episodes", "evaluations", "cache hits", "hit rate", "wall s", "episodes/s", "peak RSS MB"]
RUNS = (("ddpg", 1), ("ddpg", 2), ("random", 1), ("random", 2))
"""(agent, n_envs) pairs, each run for the same number of episodes."""


def _search_into(queue: Any, *args: Any) -> None:
    queue.put(_search(*args))


def _search(agent: str, n_envs: int, episodes: int, output: str) -> dict[str, Any]:
    from mpq_rl.runs.trainer import run_search

    overrides = {"agent.name": agent, "agent.episodes": episodes, "agent.n_envs": n_envs, "output": output}
    result = run_search(load_config().with_overrides(**overrides), progress=False)
    return {
        "agent": agent,
        "n_envs": n_envs,
        "episodes": result.episodes,
        "evaluations": result.evaluations,
        "cache_hits": result.cache_hits,
        "wall_s": result.wall_seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run(runs: Sequence[tuple[str, int]] = RUNS, episodes: int = 300) -> dict[str, Any]:
    info = machine()
    results = []
    context = multiprocessing.get_context("spawn")
    for agent, n_envs in runs:
        # a plain (non-daemonic) process, since a search with n_envs > 1 starts worker processes of its own
        queue = context.Queue()
        with tempfile.TemporaryDirectory() as scratch:
            process = context.Process(
                target=_search_into, args=(queue, agent, n_envs, episodes, str(Path(scratch) / agent))
            )
            process.start()
            results.append(queue.get())
            process.join()
    return {"machine": info, "end_load": machine()["load_average"], "results": results}


def report(outcome: dict[str, Any]) -> list[str]:
    rows = [
        [
            r["agent"],
            r["n_envs"],
            r["episodes"],
            r["evaluations"],
            r["cache_hits"],
            f"{100 * r['cache_hits'] / r['episodes']:.1f}%",
            f"{r['wall_s']:.1f}",
            f"{r['episodes'] / r['wall_s']:.2f}",
            f"{r['peak_rss_mb']:.0f}",
        ]
        for r in outcome["results"]
    ]
    return [
        "## Evaluator cache hit rate and peak memory during a search",
        "",
        "The default search (digits CNN, Bit Fusion latency, budget 0.5, seed 0) run by `run_search` in a fresh "
        "process, the digits CNN already trained. Hits are episodes answered from the evaluator cache; wall time "
        "includes starting the worker processes and the held-out evaluation of the best policy and of the uniform "
        "baselines at the end.",
        "",
        *machine_lines(outcome["machine"], outcome["end_load"]),
        "",
        *table(HEADER, rows),
    ]


def main(argv: Sequence[str] | None = None, write: Writer = write_section) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=300)
    args = parser.parse_args(argv)
    publish(NAME, report(run(episodes=args.episodes)), write)


if __name__ == "__main__":
    main()
