"""Search quality against the true optimum, at equal numbers of evaluations.

The digits workload with a weight-only search over {2, 4, 8} bits (activations fixed at 8) has 3^9 = 19,683
policies: few enough to enumerate. The exhaustive searcher scores every in-budget policy first, which fills the
shared evaluator cache, so the searchers after it are timed on their own work (proposing policies, learning), not
on evaluation. For each searcher and seed, the gap is the optimum's proxy minus the best in-budget proxy found
within the first N evaluations: calibration top-1 in percentage points (coarse: one image is 0.25 points), and,
as a second section, the KL divergence to FP32 (continuous, so the optimum is unique).

Run alone: ``python benchmarks/search_quality.py`` (about half an hour on 2 cores).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import Writer, machine, machine_lines, publish, table, write_section
from mpq_rl.agents import build_searcher
from mpq_rl.config import parse_config
from mpq_rl.runs.assembly import build_problem
from mpq_rl.search.episode import Episode
from mpq_rl.search.problem import SearchProblem
from mpq_rl.search.searcher import SearchContext

NAME = "search_quality"
PROXIES = {"top1": {"metric": "top1"}, "kl": {"metric": "fidelity", "fidelity": "kl"}}
SEARCH_SPACE = {
    "quantization": {"weight_bits": [2, 4, 8], "activation_bits": [8]},
    "hardware": {"preset": "bitfusion", "metric": "latency"},
    "budget": 0.5,
}
SEARCHERS = ("mbppo", "ddpg", "td3", "sac", "ppo", "random", "greedy", "hawq")
TOLERANCE = 0.01
"""The target: within 1% of the optimum's proxy (relative to its magnitude), in every seed."""
CHECKPOINTS = (50, 100, 200, 400)
SEEDS = (0, 1, 2)


def best_within(episodes: list[Episode], n: int) -> float | None:
    """The best in-budget proxy among the first ``n`` episodes."""
    found = [e.proxy for e in episodes[:n] if e.within_budget]
    return max(found) if found else None


def evaluations_to_reach(episodes: list[Episode], target: float) -> int | None:
    """How many evaluations it took to find an in-budget policy with a proxy of at least ``target``."""
    for i, episode in enumerate(episodes, start=1):
        if episode.within_budget and episode.proxy >= target:
            return i
    return None


def search(name: str, problem: SearchProblem, episodes: int, seed: int, folder: Path) -> tuple[list[Episode], float]:
    """Run searcher ``name`` for ``episodes`` evaluations on ``problem``; its episodes and wall seconds."""
    recorded: list[Episode] = []
    context = SearchContext(problem, episodes, seed, recorded.append, folder / f"{name}-{seed}")
    started = time.perf_counter()
    try:
        build_searcher(name).search(context)
    finally:
        context.close()
    return recorded, time.perf_counter() - started


def run(
    searchers: Sequence[str] = SEARCHERS,
    checkpoints: Sequence[int] = CHECKPOINTS,
    seeds: Sequence[int] = SEEDS,
    proxy: str = "top1",
) -> dict[str, Any]:
    """Enumerate the space, then run every searcher and seed; gaps to the optimum per checkpoint."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    info = machine()
    problem = build_problem(parse_config({**SEARCH_SPACE, "proxy": PROXIES[proxy]}))
    try:
        with tempfile.TemporaryDirectory() as scratch:
            space = 3 ** len(problem.searched)
            everything, exhaustive_s = search("exhaustive", problem, space, 0, Path(scratch))
            optimum = best_within(everything, len(everything))
            scale = 100.0 if proxy == "top1" else 1.0
            target = optimum - TOLERANCE * abs(optimum)
            results = []
            for name in searchers:
                gaps: dict[int, list[float]] = {n: [] for n in checkpoints}
                walls, used, reached = [], [], []
                for seed in seeds:
                    episodes, wall = search(name, problem, checkpoints[-1], seed, Path(scratch))
                    walls.append(wall)
                    used.append(len(episodes))
                    reached.append(evaluations_to_reach(episodes, target))
                    for n in checkpoints:
                        best = best_within(episodes, n)
                        gaps[n].append(scale * (optimum - best) if best is not None else float("nan"))
                results.append(
                    {"searcher": name, "gaps": gaps, "wall_s": walls, "evaluations": used, "within_1pct": reached}
                )
    finally:
        problem.close()
        torch.set_num_threads(threads)
    return {
        "machine": info,
        "end_load": machine()["load_average"],
        "space": space,
        "in_budget": len(everything),
        "exhaustive_s": exhaustive_s,
        "optimum": optimum,
        "proxy": proxy,
        "seeds": list(seeds),
        "checkpoints": list(checkpoints),
        "results": results,
    }


def report(outcome: dict[str, Any]) -> list[str]:
    """The markdown section of RESULTS.md."""
    rows = []
    digits = 2 if outcome["proxy"] == "top1" else 5
    for r in outcome["results"]:
        cells = [f"{statistics.mean(g):.{digits}f} ± {statistics.pstdev(g):.{digits}f}" for g in r["gaps"].values()]
        used = f"{min(r['evaluations'])}-{max(r['evaluations'])}"
        reached = ", ".join("never" if n is None else str(n) for n in r["within_1pct"])
        rows.append([r["searcher"], *cells, reached, f"{statistics.mean(r['wall_s']):.1f}", used])
    if outcome["proxy"] == "top1":
        title, optimum = "top-1 on calibration data", f"calibration top-1 {100 * outcome['optimum']:.2f}%"
        unit = "top-1 points (one calibration image is 0.25 points)"
    else:
        title, optimum = "KL divergence to FP32", f"KL divergence to FP32 {-outcome['optimum']:.5f} nats"
        unit = "nats of KL divergence"
    return [
        f"## Search quality against the true optimum: {title}",
        "",
        f"Digits CNN, weight-only search over {{2, 4, 8}} bits (activations at 8), budget {SEARCH_SPACE['budget']} "
        f"of W8A8 Bit Fusion latency: {outcome['space']:,} policies, {outcome['in_budget']:,} in budget, enumerated "
        f"in {outcome['exhaustive_s']:.0f} s. Optimum: {optimum}. Cells: gap to the optimum in {unit} after N "
        f'evaluations, mean ± std over seeds {outcome["seeds"]} (0 = optimum found); "within 1%": per seed, the '
        "evaluations it took to come within 1% of the optimum's proxy (the target: at most 200 in every seed). The "
        "searchers share the filled evaluator cache, so wall time is each searcher's own work (1 torch thread).",
        "",
        *machine_lines(outcome["machine"], outcome["end_load"]),
        "",
        *table(
            [
                "searcher",
                *[f"gap @ {n}" for n in outcome["checkpoints"]],
                "within 1% after (per seed)",
                "wall s / run",
                "evaluations used",
            ],
            rows,
        ),
    ]


def main(argv: Sequence[str] | None = None, write: Writer = write_section) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--searchers", default=",".join(SEARCHERS), help="comma-separated searcher names")
    parser.add_argument("--proxy", choices=[*PROXIES, "all"], default="all")
    args = parser.parse_args(argv)
    for proxy in PROXIES if args.proxy == "all" else [args.proxy]:
        publish(f"{NAME}_{proxy}", report(run(args.searchers.split(","), proxy=proxy)), write)


if __name__ == "__main__":
    main()
