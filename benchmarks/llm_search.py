"""Per-layer bit allocation for causal LMs under a bits-per-weight budget: every searcher against the baselines.

For a workload config (``experiments/configs/tinylm.yaml`` or ``smollm2.yaml``) and each budget in bits per weight,
one search problem is built (its evaluator cache shared by every run), and each searcher runs for the given number
of evaluations per seed. A run's answer is its best in-budget policy by the calibration KL divergence; it is then
scored once on the held-out text: perplexity ``exp(nll)`` and KL to the float model. Uniform settings (every
searched layer at one format) are scored on the held-out text the same way. Each finished run is appended to a
JSON lines file at once, so a sweep stopped early keeps what it finished; ``--report`` renders the files as
markdown tables. ``--timing`` measures seconds per evaluation against the float forward pass over the same
calibration tokens (alternated, on the machine as loaded).

Run: ``python benchmarks/llm_search.py --config experiments/configs/tinylm.yaml --bpw 3.0 4.0 --seeds 0 1 2
--episodes 200 --out docs/results/llm_tinylm.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mpq_rl.agents import build_searcher
from mpq_rl.config import load_config
from mpq_rl.quantization.formats import label
from mpq_rl.runs.assembly import build_problem
from mpq_rl.search.episode import Episode
from mpq_rl.search.evaluator import evaluate_on_test
from mpq_rl.search.problem import SearchProblem
from mpq_rl.search.searcher import SearchContext
from mpq_rl.search.size_budget import bits_per_weight
from mpq_rl.workloads.model_io import model_outputs

SEARCHERS = ("fixed_mix", "greedy", "hawq", "evolution", "mbppo")


def policy_bpw(problem: SearchProblem, episode: Episode) -> float:
    """The searched layers' average stored bits per weight of an episode's policy."""
    workload = problem.workload
    return bits_per_weight(
        episode.cost_ratio["size"], problem.costs, workload.layers, workload.searched, workload.fixed
    )


def held_out(problem: SearchProblem, policy: dict[str, tuple[int, int]]) -> dict[str, float]:
    """Perplexity and KL to the float model of ``policy`` on the test text."""
    metrics = evaluate_on_test(problem.workload, policy, problem.evaluator.simulator)
    return {"test_ppl": math.exp(metrics["nll"]), "test_kl": metrics["kl"]}


def run_searcher(problem: SearchProblem, name: str, episodes: int, seed: int) -> dict[str, Any]:
    """One search; its best in-budget policy scored on the held-out text."""
    recorded: list[Episode] = []
    with tempfile.TemporaryDirectory() as folder:
        context = SearchContext(problem, episodes, seed, recorded.append, Path(folder))
        started = time.perf_counter()
        try:
            build_searcher(name).search(context)
        finally:
            context.close()
        seconds = time.perf_counter() - started
    within = [e for e in recorded if e.within_budget]
    row: dict[str, Any] = {"searcher": name, "seed": seed, "evaluations": len(recorded), "seconds": seconds}
    if not within:
        return row | {"found": False}
    best = max(within, key=lambda e: e.proxy)
    row |= {"found": True, "calibration_kl": best.metrics["kl"], "bpw": policy_bpw(problem, best)}
    row |= held_out(problem, best.policy)
    row["formats"] = sorted({label(w) for name, (w, _) in best.policy.items() if name in problem.searched})
    return row


def uniform_rows(problem: SearchProblem) -> list[dict[str, Any]]:
    """Every searched layer at each weight candidate, and the float model, on the held-out text."""
    rows = [{"searcher": "float", "bpw": 32.0} | held_out(problem, {})]
    for index, code in enumerate(problem.budget.weight_codes):
        episode = problem.score([(index, 0)] * len(problem.searched))
        rows.append(
            {
                "searcher": f"uniform {label(code)}",
                "bpw": policy_bpw(problem, episode),
                "within": episode.within_budget,
                "calibration_kl": episode.metrics["kl"],
            }
            | held_out(problem, episode.policy)
        )
    return rows


def timing(problem: SearchProblem, repeats: int = 5) -> dict[str, float]:
    """Seconds per evaluation (a fresh policy each time, simulator swap + forward + scores) and per float forward
    over the calibration tokens, alternated; medians."""
    workload, evaluator = problem.workload, problem.evaluator
    rng = torch.Generator().manual_seed(0)
    evaluations, forwards = [], []
    for _ in range(repeats):
        choices = torch.randint(len(problem.budget.weight_codes), (len(problem.searched),), generator=rng).tolist()
        policy = problem.policy([(c, 0) for c in choices])
        started = time.perf_counter()
        evaluator.measure(policy)
        evaluations.append(time.perf_counter() - started)
        evaluator.simulator.restore()
        started = time.perf_counter()
        model_outputs(workload.model, workload.calibration)
        forwards.append(time.perf_counter() - started)
    evaluation, forward = statistics.median(evaluations), statistics.median(forwards)
    tokens = sum(int(inputs["input_ids"].numel()) for inputs, _ in workload.calibration)
    return {
        "seconds_per_evaluation": evaluation,
        "seconds_per_forward": forward,
        "ratio": evaluation / forward,
        "calibration_tokens": tokens,
    }


def append(path: Path, row: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


def sweep(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    overrides = {"data.calibration_tokens": args.calibration_tokens, "data.test_tokens": args.test_tokens}
    base = load_config(args.config).with_overrides(**{k: v for k, v in overrides.items() if v is not None})
    first = build_problem(base.with_overrides(**{"budget.bpw": args.bpw[0]}))
    for bpw in args.bpw:
        # one workload and evaluator (its cache included) for every budget
        problem = build_problem(
            base.with_overrides(**{"budget.bpw": bpw}),
            workload=first.workload,
            costs=first.costs,
            evaluator=first.evaluator,
        )
        common = {"workload": base.model.name, "budget_bpw": bpw}
        if args.timing:
            append(args.out, common | {"searcher": "timing"} | timing(problem))
        if not args.no_uniform:
            for row in uniform_rows(problem):
                append(args.out, common | row)
        for seed in args.seeds:
            for name in args.searchers:
                append(args.out, common | run_searcher(problem, name, args.episodes, seed))
    first.close()


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def report(paths: list[Path]) -> str:
    """Markdown tables of the JSON lines files: per workload and budget, searchers (mean ± sd over seeds) and
    uniform settings."""
    rows = [json.loads(line) for path in paths for line in path.read_text().splitlines() if line.strip()]
    lines = []
    for workload in dict.fromkeys(r["workload"] for r in rows):
        for bpw in dict.fromkeys(r["budget_bpw"] for r in rows if r["workload"] == workload):
            chosen = [r for r in rows if r["workload"] == workload and r["budget_bpw"] == bpw]
            lines += [
                f"### {workload} at {bpw} bits per weight",
                "",
                "| method | seeds | evaluations | bpw | calibration KL | held-out KL | held-out perplexity | "
                "search s |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for r in chosen:
                if r["searcher"] == "float" or r["searcher"].startswith("uniform"):
                    fits = "" if r["searcher"] == "float" else (" (within)" if r["within"] else " (over)")
                    kl = "-" if r["searcher"] == "float" else f"{r['calibration_kl']:.3g}"
                    lines.append(
                        f"| {r['searcher']}{fits} | - | - | {r['bpw']:.3f} | {kl} | {r['test_kl']:.3g} | "
                        f"{r['test_ppl']:.2f} | - |"
                    )
            for name in dict.fromkeys(r["searcher"] for r in chosen if "seed" in r):
                runs = [r for r in chosen if r["searcher"] == name and "seed" in r]
                found = [r for r in runs if r.get("found")]
                lines.append(
                    f"| {name} | {len(runs)} ({len(found)} found) | {runs[0]['evaluations']} | "
                    f"{_mean_sd([r['bpw'] for r in found])} | "
                    + " | ".join(
                        f"{statistics.mean(v):.3g}" if v else "-"
                        for v in ([r["calibration_kl"] for r in found], [r["test_kl"] for r in found])
                    )
                    + f" | {_mean_sd([r['test_ppl'] for r in found])} | {_mean_sd([r['seconds'] for r in runs])} |"
                )
            for r in chosen:
                if r["searcher"] == "timing":
                    lines.append("")
                    lines.append(
                        f"Seconds per evaluation: {r['seconds_per_evaluation']:.3f} s against "
                        f"{r['seconds_per_forward']:.3f} s for the float forward pass over the same "
                        f"{r['calibration_tokens']} calibration tokens "
                        f"(ratio {r['ratio']:.2f}, medians of alternated runs)."
                    )
            lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path)
    parser.add_argument("--bpw", type=float, nargs="+", default=[3.0, 4.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--searchers", type=lambda s: s.split(","), default=list(SEARCHERS))
    parser.add_argument("--calibration-tokens", type=int, help="override data.calibration_tokens")
    parser.add_argument("--test-tokens", type=int, help="override data.test_tokens")
    parser.add_argument("--no-uniform", action="store_true", help="skip the uniform settings (run them once)")
    parser.add_argument("--timing", action="store_true", help="measure seconds per evaluation first")
    parser.add_argument("--out", type=Path, default=Path("docs/results/llm.jsonl"))
    parser.add_argument("--report", type=Path, nargs="+", help="render these JSON lines files as markdown")
    args = parser.parse_args()
    if args.report:
        print(report(args.report))
    else:
        sweep(args)


if __name__ == "__main__":
    main()
