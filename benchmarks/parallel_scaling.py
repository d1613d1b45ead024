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
    "variant (backend, workers)",
    "ms / evaluation",
    "evaluations / hour",
    "vs local",
    "dispatch ms",
    "start + warm-up s",
]
WORKER_COUNTS = (8, 32, 128)
HIT_RATES = (0.0, 0.5, 0.9)
WARMUP_POLICIES = 64
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
    from mpq_rl.pool import Processes
    from mpq_rl.ray_backend import RayActors

    return {f"process, {workers}": Processes(spec, workers, threads=1), f"ray, {workers}": RayActors(spec, workers)}


def run(policies: int = 24, repeats: int = 5) -> dict[str, Any]:
    import ray

    from mpq_rl.agents.random_search import sample_policy
    from mpq_rl.config import load_config
    from mpq_rl.problem import build_problem

    torch.set_num_threads(1)  # one thread in every process: 2 workers on 2 cores use both, and no more
    info = machine()
    problem = build_problem(load_config())
    evaluator = problem.evaluator
    rng = np.random.default_rng(0)
    batch = [problem.policy(sample_policy(problem.budget, rng)) for _ in range(policies)]
    # other policies first, so every worker has calibrated the ranges of (nearly) every (layer, bits) the timed
    # batch uses, as it has a few dozen episodes into a search; the driver warms on the batch itself
    warmup = [problem.policy(sample_policy(problem.budget, rng)) for _ in range(WARMUP_POLICIES)]

    # one CPU per actor of the 1- and 2-worker backends (idle ones hold theirs); the machine's cores are what they are
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False, configure_logging=False)
    backends = {**_backends(problem.spec, 1), **_backends(problem.spec, 2)}
    startup = {}
    for name, backend in backends.items():
        started = time.perf_counter()
        backend.evaluate(warmup)
        startup[name] = time.perf_counter() - started
    for policy in batch:
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
    ray.shutdown()
    per_eval = {name: float(np.median(t)) / len(batch) for name, t in times.items()}
    return {
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
    from mpq_rl.agents.base import SearchContext

    seen: list[Any] = []
    context = SearchContext(problem, len(batch), 0, seen.append, None)
    choices = [[problem.budget.top_choice()] * len(problem.searched)] * len(batch)
    context.score(choices[0])
    started = time.perf_counter()
    context.score_many(choices[1:])
    return (time.perf_counter() - started) / (len(batch) - 1)


def report(outcome: dict[str, Any]) -> list[str]:
    per_eval, startup = outcome["per_eval_s"], outcome["startup_s"]
    local = per_eval["local"]
    rows = [["local (the driver alone)", f"{1e3 * local:.1f}", f"{3600 / local:,.0f}", "-", "-", "-"]]
    for name in startup:
        overhead = per_eval[name] - local if name.endswith(", 1") else None
        rows.append(
            [
                name,
                f"{1e3 * per_eval[name]:.1f}",
                f"{3600 / per_eval[name]:,.0f}",
                f"{outcome['vs_local'][name]:.2f}x",
                "-" if overhead is None else f"{1e3 * overhead:+.1f}",
                f"{startup[name]:.1f}",
            ]
        )
    rest = EVALUATIONS_PER_SEARCH - WARMUP_POLICIES  # the warm-up's are in the start-up time
    searches = [
        f"{kind} {w}: {3600 / (startup[f'{kind}, {w}'] + rest * per_eval[f'{kind}, {w}']):.1f}"
        for kind in ("process", "ray")
        for w in (1, 2)
    ]
    model = _model_rows(outcome)
    speedup = outcome["speedup"]
    return [
        "## Parallel evaluation: 1 vs 2 workers, dispatch overhead, simulated scaling (benchmarks/parallel_scaling.py)",
        "",
        f"{outcome['policies']} fresh random in-budget policies of the default digits problem (512 calibration "
        f"samples) evaluated as one batch by each variant, {outcome['repeats']} interleaved rounds, one torch thread "
        "per process, every backend started and warm; medians. The machine is shared with other jobs (see the load "
        "averages): the 2-worker figures are what was left of its 2 cores.",
        "",
        *machine_lines(outcome["machine"], outcome["end_load"]),
        "",
        *table(HEADER, rows),
        "",
        f"- 2 workers over 1 (median of per-round ratios): process {speedup['process']:.2f}x, ray "
        f"{speedup['ray']:.2f}x; target >= {TARGET}x: process {_verdict(speedup['process'])}, ray "
        f"{_verdict(speedup['ray'])}",
        f"- searches of {EVALUATIONS_PER_SEARCH} fresh evaluations per hour, start-up and warm-up included: "
        + ", ".join(searches),
        "- driver CPU per evaluation: "
        + ", ".join(f"{name} {1e3 * s:.2f} ms" for name, s in outcome["driver_cpu_s"].items())
        + f"; an episode answered from the cache: {1e3 * outcome['hit_s']:.2f} ms",
        "",
        "Simulated speed-up over one evaluation at a time (a model, see the module docstring: driver serial time per "
        "evaluation = the Ray driver's CPU per evaluation, dispatch overhead = ray, 1 minus local):",
        "",
        *table(["cache hit rate", *(f"{w} workers" for w in WORKER_COUNTS)], model),
    ]


def _model_rows(outcome: dict[str, Any]) -> list[list[str]]:
    per_eval = outcome["per_eval_s"]
    evaluation = per_eval["local"]
    overhead = max(per_eval["ray, 1"] - evaluation, 0.0)
    driver = outcome["driver_cpu_s"]["ray, 2"]
    return [
        [f"{hit:.0%}"]
        + [f"{simulated_speedup(w, evaluation, overhead, driver, hit, outcome['hit_s']):.1f}x" for w in WORKER_COUNTS]
        for hit in HIT_RATES
    ]


def _verdict(ratio: float) -> str:
    return "met" if ratio >= TARGET else "**missed**"


def main(argv: Sequence[str] | None = None, write: Writer = write_section) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", type=int, default=24, help="policies per batch")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds")
    args = parser.parse_args(argv)
    outcome = run(args.policies, args.repeats)
    publish(NAME, report(outcome), write)
    return outcome


if __name__ == "__main__":
    main()
