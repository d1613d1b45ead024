"""What each ingredient of the default searcher (mbppo) contributes, and what its own work costs.

On the digits workload, each variant of mbppo (one ingredient switched off at a time), plain PPO and random search
runs ``--episodes`` evaluations per seed under Bit Fusion latency and energy budgets. Each run builds its problem
afresh (empty evaluator cache, cold simulator caches), so its wall time includes everything it does. Reported per
variant: the best in-budget calibration proxy (ties to the cheaper policy), that policy's held-out test top-1,
the wall time, and the overhead ratio: (wall time - time spent evaluating) / time spent evaluating.

Run alone: ``python benchmarks/ablation.py`` (about ten minutes on 2 cores).
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
from mpq_rl.runs.recorder import better
from mpq_rl.search.episode import Episode
from mpq_rl.search.evaluator import evaluate_on_test
from mpq_rl.search.searcher import SearchContext

NAME = "ablation"
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "mbppo (all ingredients)": ("mbppo", {}),
    "without sensitivity probes": ("mbppo", {"probes": False}),
    "without measured errors (textbook 4^-bits)": ("mbppo", {"sensitivity": False}),
    "without trust-region neighbours": ("mbppo", {"neighbours": 0}),
    "without Lagrangian proposals": ("mbppo", {"solver": "none"}),
    "without the agent (surrogate)": ("surrogate", {}),
    "without prior training": ("mbppo", {"prior": False}),
    "without surrogate (model-free PPO)": ("mbppo", {"surrogate": False}),
    "plain PPO (agent: ppo)": ("ppo", {}),
    "random search": ("random", {}),
}
SETTINGS = (("latency", 0.25), ("latency", 0.35), ("energy", 0.25))
SEEDS = (0, 1, 2)


def one_run(searcher: str, kwargs: dict[str, Any], metric: str, fraction: float, seed: int, episodes: int) -> dict:
    """One search from a fresh problem: best proxy, its held-out top-1, wall and evaluation seconds."""
    config = parse_config({"seed": seed, "budget": fraction, "hardware": {"preset": "bitfusion", "metric": metric}})
    started = time.perf_counter()
    problem = build_problem(config)
    built = time.perf_counter() - started
    best: Episode | None = None
    recorded: list[Episode] = []
    with tempfile.TemporaryDirectory() as scratch:
        context = SearchContext(problem, episodes, seed, recorded.append, Path(scratch))
        started = time.perf_counter()
        try:
            build_searcher(searcher, kwargs).search(context)
        finally:
            context.close()
        wall = time.perf_counter() - started
    for episode in recorded:
        if episode.within_budget and (best is None or better(episode, best, metric)):
            best = episode
    assert best is not None
    policy = {name: (w, a) for name, (w, a) in best.policy.items()}
    test = evaluate_on_test(problem.workload, policy, problem.evaluator.simulator)["top1"]
    problem.close()
    return {
        "proxy": best.proxy,
        "test": test,
        "wall": wall,
        "build": built,
        "evaluating": problem.evaluation_seconds,
    }


def run(episodes: int = 300, seeds: Sequence[int] = SEEDS, variants: Sequence[str] = tuple(VARIANTS)) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    info = machine()
    results = []
    try:
        for label in variants:
            searcher, kwargs = VARIANTS[label]
            for metric, fraction in SETTINGS:
                runs = [one_run(searcher, kwargs, metric, fraction, seed, episodes) for seed in seeds]
                results.append({"variant": label, "metric": metric, "budget": fraction, "runs": runs})
                print(label, metric, fraction, [round(r["proxy"], 4) for r in runs], flush=True)
    finally:
        torch.set_num_threads(threads)
    return {
        "machine": info,
        "end_load": machine()["load_average"],
        "episodes": episodes,
        "seeds": list(seeds),
        "results": results,
    }


def _mean_std(values: list[float], scale: float = 100.0) -> str:
    return f"{scale * statistics.mean(values):.2f} ± {scale * statistics.pstdev(values):.2f}"


def report(outcome: dict[str, Any]) -> list[str]:
    settings = [(m, f) for m, f in SETTINGS]
    header = ["variant"]
    header += [f"{m} {f}: proxy / test top-1 %" for m, f in settings]
    header += ["wall s / run", "overhead / evaluation time"]
    rows = []
    for label in dict.fromkeys(r["variant"] for r in outcome["results"]):
        cells = [label]
        walls, overheads = [], []
        for metric, fraction in settings:
            entry = next(
                r for r in outcome["results"] if (r["variant"], r["metric"], r["budget"]) == (label, metric, fraction)
            )
            runs = entry["runs"]
            cells.append(f"{_mean_std([r['proxy'] for r in runs])} / {_mean_std([r['test'] for r in runs])}")
            walls += [r["wall"] for r in runs]
            overheads += [(r["wall"] - r["evaluating"]) / r["evaluating"] for r in runs]
        cells += [f"{statistics.mean(walls):.1f}", f"{statistics.median(overheads):.2f}"]
        rows.append(cells)
    return [
        "## Ablation of the default searcher (mbppo) on digits",
        "",
        f"Digits CNN, {outcome['episodes']} evaluations per run, seeds {outcome['seeds']}, Bit Fusion budgets as "
        "fractions of W8A8. Cells: best in-budget calibration top-1 (the proxy the search sees) / held-out test "
        "top-1 of that policy, mean ± std over seeds, in %. Each run builds its problem afresh (cold caches). "
        "Overhead: (search wall time - time spent evaluating policies) / time spent evaluating, median over all "
        "runs of the variant; it includes the sensitivity measurement, surrogate fits and PPO updates.",
        "",
        *machine_lines(outcome["machine"], outcome["end_load"]),
        "",
        *table(header, rows),
    ]


def main(argv: Sequence[str] | None = None, write: Writer = write_section) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=300)
    parser.add_argument("--variants", help="comma-separated variant labels (default: all)")
    args = parser.parse_args(argv)
    variants = args.variants.split(",") if args.variants else tuple(VARIANTS)
    publish(NAME, report(run(args.episodes, variants=variants)), write)


if __name__ == "__main__":
    main()
