"""Evaluations per hour with 1 and 2 workers on the process and Ray backends, the dispatch overhead per evaluation,
and a simulated scaling curve to 8, 32 and 128 workers.

On the default digits problem (seed 0), fresh random in-budget policies are evaluated in batches by each backend,
already started and warm, one torch thread per process; the variants run interleaved (each round evaluates the
same batch with every variant, in rotating order), and ratios are medians of per-round ratios. The driver measuring
the same batch by itself (``local``) is the baseline: a backend's time per evaluation with one worker, minus the
local time, is its dispatch overhead (sending a policy, receiving metrics, waking up). The start-up time (workers
building the problem, then a warm-up of 64 other policies so that their ranges are calibrated) is measured once per
backend and reported beside it.

The simulated curve (:func:`simulated_speedup`) is a model, not a measurement: an episode answered from the
driver's cache costs ``hit_s``; a fresh evaluation costs the driver ``driver_s`` (serial: dispatching, receiving,
merging) and a worker ``evaluation_s + overhead_s - driver_s`` (parallel over the workers). It leaves out
stragglers in a batch, network latency between machines and the driver's own work between batches (an RL agent's
updates), so it is an upper bound.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

from benchmarks.harness import Writer, interleaved, machine, machine_lines, paired_ratio, publish, table, write_section

NAME = "parallel_scaling"
TARGET = 1.7
"""Evaluations per hour with 2 workers over 1 worker, on 2 cores (issue 16)."""
HEADER = [
    "workload",
    "variant (backend, workers)",
    "ms / evaluation",
    "evaluations / hour",
    "vs local",
    "dispatch ms",
    "start + warm-up s",
]
WORKER_COUNTS = (8, 32, 128)
HIT_RATES = (0.0, 0.5, 0.9)
WORKLOADS = {"digits": None, "minilm": Path(__file__).resolve().parent.parent / "experiments/configs/minilm.yaml"}
"""The default digits problem (an evaluation of about 10 ms) and the MiniLM one (about 1 s)."""
BATCHES = {"digits": (24, 5), "minilm": (8, 3)}
"""Policies per batch and interleaved rounds, per workload."""
EVALUATIONS_PER_SEARCH = 300
"""The default ``agent.episodes``: a search, for searches per hour."""


def simulated_speedup(
    workers: int, evaluation_s: float, overhead_s: float, driver_s: float, hit_rate: float, hit_s: float
) -> float:
    """Episodes per second with ``workers`` over one evaluation at a time in the driver (see the module docstring):
    per episode, ``hit_rate * hit_s + (1 - hit_rate) * (driver_s + (evaluation_s + overhead_s - driver_s) / W)``
    against ``hit_rate * hit_s + (1 - hit_rate) * evaluation_s``."""
    fresh = driver_s + max(evaluation_s + overhead_s - driver_s, 0.0) / workers
    serial = hit_rate * hit_s + (1 - hit_rate) * evaluation_s
    return serial / (hit_rate * hit_s + (1 - hit_rate) * fresh)


def _backends(spec: Any, workers: int) -> dict[str, Any]:
    from mpq_rl.search.pool import Processes
    from mpq_rl.search.ray_backend import RayActors

    return {f"process, {workers}": Processes(spec, workers, threads=1), f"ray, {workers}": RayActors(spec, workers)}


def run(workload: str = "digits", policies: int = 24, repeats: int = 5) -> dict[str, Any]:
    from mpq_rl.agents.random_search import sample_policy
    from mpq_rl.config import load_config
    from mpq_rl.runs.assembly import build_problem
    from mpq_rl.search.ray_cluster import connect, disconnect

    torch.set_num_threads(1)  # one thread in every process: 2 workers on 2 cores use both, and no more
    info = machine()
    problem = build_problem(load_config(WORKLOADS[workload]))
    evaluator, budget = problem.evaluator, problem.budget
    rng = np.random.default_rng(0)
    batch = [problem.policy(sample_policy(budget, rng)) for _ in range(policies)]
    # every layer at every (w, a) pair, twice: each worker quantizes every (layer, bits) and calibrates its range
    # (done once per process, on first use) before the timing, as it has early in a search
    pairs = [(w, a) for w in range(len(budget.weight_codes)) for a in range(len(budget.activation_codes))]
    warmup = 2 * [problem.policy([pair] * len(problem.searched)) for pair in pairs]

    # one CPU per actor of the 1- and 2-worker backends (idle ones hold theirs); the machine's cores are what they are
    joined = connect(None, cpus=3)
    backends = {**_backends(problem.spec, 1), **_backends(problem.spec, 2)}
    startup = {}
    for name, backend in backends.items():
        started = time.perf_counter()
        backend.evaluate(warmup)
        startup[name] = time.perf_counter() - started
    for policy in warmup:
        evaluator.measure(policy)

    driver_cpu: dict[str, float] = {}

    def timed(name: str, backend: Any) -> Any:
        def call() -> None:
            started = time.process_time()
            backend.evaluate(batch)
            driver_cpu[name] = driver_cpu.get(name, 0.0) + time.process_time() - started

        return call

    variants = {"local": lambda: [evaluator.measure(p) for p in batch]}
    variants |= {name: timed(name, backend) for name, backend in backends.items()}
    times = interleaved(variants, repeats)
    hit_s = _hit_seconds(problem, batch)
    for backend in backends.values():
        backend.close()
    disconnect(joined)
    per_eval = {name: float(np.median(t)) / len(batch) for name, t in times.items()}
    return {
        "workload": workload,
        "warmup": len(warmup),
        "machine": info,
        "end_load": machine()["load_average"],
        "policies": len(batch),
        "repeats": repeats,
        "per_eval_s": per_eval,
        "startup_s": startup,
        "driver_cpu_s": {name: cpu / (repeats * len(batch)) for name, cpu in driver_cpu.items()},
        "hit_s": hit_s,
        "speedup": {kind: paired_ratio(times[f"{kind}, 1"], times[f"{kind}, 2"]) for kind in ("process", "ray")},
        "vs_local": {name: paired_ratio(times["local"], times[name]) for name in backends},
    }


def _hit_seconds(problem: Any, batch: list[Any]) -> float:
    """Seconds per episode answered from the driver's cache (costs, reward and the cache lookup)."""
    from mpq_rl.search.searcher import SearchContext

    seen: list[Any] = []
    context = SearchContext(problem, len(batch), 0, seen.append, None)
    choices = [[problem.budget.top_choice()] * len(problem.searched)] * len(batch)
    context.score(choices[0])
    started = time.perf_counter()
    context.score_many(choices[1:])
    return (time.perf_counter() - started) / (len(batch) - 1)


def report(outcomes: list[dict[str, Any]]) -> list[str]:
    first = outcomes[0]  # the machine and the load at the start
    rows, notes, model = [], [], []
    for outcome in outcomes:
        workload, per_eval, startup = outcome["workload"], outcome["per_eval_s"], outcome["startup_s"]
        local = per_eval["local"]
        rows.append([workload, "local (the driver alone)", f"{1e3 * local:.1f}", f"{3600 / local:,.0f}", "-", "-", "-"])
        for name in startup:
            overhead = per_eval[name] - local if name.endswith(", 1") else None
            rows.append(
                [
                    workload,
                    name,
                    f"{1e3 * per_eval[name]:.1f}",
                    f"{3600 / per_eval[name]:,.0f}",
                    f"{outcome['vs_local'][name]:.2f}x",
                    "-" if overhead is None else f"{1e3 * overhead:+.1f}",
                    f"{startup[name]:.1f}",
                ]
            )
        rest = max(EVALUATIONS_PER_SEARCH - outcome["warmup"], 0)  # the warm-up's are in the start-up time
        searches = ", ".join(f"{name} {3600 / (startup[name] + rest * per_eval[name]):.1f}" for name in startup)
        speedup = outcome["speedup"]
        notes += [
            f"- {workload}: 2 workers over 1 (median of per-round ratios): process {speedup['process']:.2f}x, ray "
            f"{speedup['ray']:.2f}x (target >= {TARGET}x: process {_verdict(speedup['process'])}, ray "
            f"{_verdict(speedup['ray'])}); searches of {EVALUATIONS_PER_SEARCH} evaluations per hour, start-up "
            f"included: {searches}; driver CPU per evaluation: "
            + ", ".join(f"{name} {1e3 * s:.2f} ms" for name, s in outcome["driver_cpu_s"].items())
            + f"; an episode answered from the cache: {1e3 * outcome['hit_s']:.2f} ms"
        ]
        model += _model_rows(outcome)
    return [
        "## Parallel evaluation: 1 vs 2 workers, dispatch overhead, simulated scaling (benchmarks/parallel_scaling.py)",
        "",
        "Fresh random in-budget policies of the default digits problem (512 calibration samples) and of "
        "experiments/configs/minilm.yaml (64 sentences), evaluated as one batch by each variant ("
        + ", ".join(f"{o['workload']} {o['policies']} policies, {o['repeats']} rounds" for o in outcomes)
        + "; interleaved), one torch thread per process, every backend started and "
        "warmed up (start-up: building the problem in each worker, then every layer at every bit pair, twice); "
        "medians. The machine is shared with other jobs (see the load averages: more runnable processes than its 2 "
        "cores): the figures are what the variants got of it, side by side.",
        "",
        *machine_lines(first["machine"], outcomes[-1]["end_load"]),
        "",
        *table(HEADER, rows),
        "",
        *notes,
        "",
        "Simulated speed-up over one evaluation at a time in the driver (a model, see the module docstring: "
        "evaluation = local, dispatch overhead = ray 1 minus local, driver serial time = the Ray driver's CPU per "
        "evaluation with 2 workers, which counts Ray's background threads too and so grows with the evaluation "
        "time: the curve is an upper bound on the driver's share, a lower bound on the speed-up):",
        "",
        *table(["workload", "cache hit rate", *(f"{w} workers" for w in WORKER_COUNTS)], model),
    ]


def _model_rows(outcome: dict[str, Any]) -> list[list[str]]:
    per_eval = outcome["per_eval_s"]
    evaluation = per_eval["local"]
    overhead = max(per_eval["ray, 1"] - evaluation, 0.0)
    driver = outcome["driver_cpu_s"]["ray, 2"]
    return [
        [outcome["workload"], f"{hit:.0%}"]
        + [f"{simulated_speedup(w, evaluation, overhead, driver, hit, outcome['hit_s']):.1f}x" for w in WORKER_COUNTS]
        for hit in HIT_RATES
    ]


def _verdict(ratio: float) -> str:
    return "met" if ratio >= TARGET else "**missed**"


def main(argv: Sequence[str] | None = None, write: Writer = write_section) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS))
    parser.add_argument("--policies", type=int, help="policies per batch (default: digits 24, minilm 8)")
    parser.add_argument("--repeats", type=int, help="interleaved rounds (default: digits 5, minilm 3)")
    args = parser.parse_args(argv)
    outcomes = [run(w, args.policies or BATCHES[w][0], args.repeats or BATCHES[w][1]) for w in args.workloads]
    publish(NAME, report(outcomes), write)
    return outcomes


if __name__ == "__main__":
    main()
