"""Step overhead against model depth: the environment's own time per step, evaluation excluded.

Target (the environment issue): under 1 ms per step for a 1000-layer model, so the agent, not the environment,
bounds a deep search. The models are synthetic MLPs (``Linear(16, 16)`` and ReLU, repeated) of 10, 100 and 1000
layers, built from Python objects the way a user would (:func:`~mpq_rl.workloads.workload.assemble_workload` with a tiny
``TensorDataset``, :func:`~mpq_rl.hardware.build_cost_table`, :class:`~mpq_rl.search.evaluator.Evaluator`,
:class:`~mpq_rl.search.problem.SearchProblem`, :class:`~mpq_rl.envs.BitWidthEnv`).

Every ``step`` but the last of each episode is timed on its own (the last one evaluates the policy, which
``episode_cost`` measures); ``reset`` is timed too. Episodes of the depths are interleaved, round after round,
with seeded random actions from a few fixed sequences per depth that were each played once before timing, so the
final evaluations are cache hits and the rounds stay short.

Run: ``python benchmarks/step_overhead.py [--depths 10 100 1000] [--repeats N]``; it rewrites its section of
``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import Writer, machine, machine_lines, publish, table, verdict, write_section
from mpq_rl.config import parse_config
from mpq_rl.envs import BitWidthEnv
from mpq_rl.hardware import build_cost_table
from mpq_rl.runs.assembly import assemble_workload, build_problem
from mpq_rl.search.evaluator import Evaluator

NAME = "step_overhead"
THREADS = 2
DEPTHS = (10, 100, 1000)
WIDTH = 16
SAMPLES = 32
ACTION_SEQUENCES = 3
"""Fixed action sequences per depth, cycled over the rounds."""
STEP_TARGET_MS = 1.0
"""Per-step time allowed at 1000 layers."""


def mlp(depth: int, width: int = WIDTH) -> nn.Module:
    """``depth`` Linear layers of ``width`` features with ReLU between, the last one giving ``width`` logits."""
    layers: list[nn.Module] = []
    for i in range(depth):
        layers.append(nn.Linear(width, width))
        if i < depth - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def build_env(depth: int, seed: int = 0) -> BitWidthEnv:
    """An environment over a ``depth``-layer MLP with random labelled data, built from Python objects."""
    generator = torch.Generator().manual_seed(seed)
    model = mlp(depth)
    inputs = torch.randn(SAMPLES, WIDTH, generator=generator)
    labels = torch.randint(WIDTH, (SAMPLES,), generator=generator)
    splits = {"calibration": TensorDataset(inputs, labels), "test": TensorDataset(inputs, labels)}
    config = parse_config(
        {"data": {"name": "none"}, "quantization": {"weight_range": "minmax", "activation_range": "minmax"}}
    )
    workload = assemble_workload(config, model, splits)
    costs = build_cost_table(workload.layers, config.hardware)
    problem = build_problem(config, workload=workload, costs=costs, evaluator=Evaluator(workload))
    return BitWidthEnv(problem=problem)


def episode_step_times(env: BitWidthEnv, actions: Sequence[np.ndarray]) -> tuple[float, list[float]]:
    """Seconds of ``reset`` and of each step but the last, for one episode of ``actions``."""
    start = time.perf_counter()
    env.reset()
    reset_seconds = time.perf_counter() - start
    steps = []
    for action in actions[:-1]:
        start = time.perf_counter()
        env.step(action)
        steps.append(time.perf_counter() - start)
    env.step(actions[-1])
    return reset_seconds, steps


def run(depths: Sequence[int] = DEPTHS, repeats: int = 30, seed: int = 0) -> dict[str, Any]:
    """Per-step and reset times (ms) per depth with ``torch.set_num_threads(2)``; the results and the machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        info = machine()
        rng = np.random.default_rng(seed)
        envs, sequences, setup_s = {}, {}, {}
        for depth in depths:
            start = time.perf_counter()
            envs[depth] = build_env(depth, seed)
            setup_s[depth] = time.perf_counter() - start
            shape = envs[depth].action_space.shape
            sequences[depth] = [
                [rng.uniform(-1.0, 1.0, shape).astype(np.float32) for _ in range(depth)]
                for _ in range(ACTION_SEQUENCES)
            ]
            for actions in sequences[depth]:
                episode_step_times(envs[depth], actions)
        steps: dict[int, list[float]] = {d: [] for d in depths}
        resets: dict[int, list[float]] = {d: [] for d in depths}
        order = list(depths)
        for r in range(repeats):
            for depth in order[r % len(order) :] + order[: r % len(order)]:
                reset_s, step_s = episode_step_times(envs[depth], sequences[depth][r % ACTION_SEQUENCES])
                resets[depth].append(reset_s)
                steps[depth].extend(step_s)
        for env in envs.values():
            env.close()
        end_load = machine()["load_average"]
    finally:
        torch.set_num_threads(threads)
    results = []
    for depth in depths:
        step_ms = 1e3 * statistics.median(steps[depth])
        results.append(
            {
                "depth": depth,
                "steps_timed": len(steps[depth]),
                "step_ms": step_ms,
                "step_mean_ms": 1e3 * statistics.fmean(steps[depth]),
                "step_p99_ms": 1e3 * float(np.percentile(steps[depth], 99)),
                "reset_ms": 1e3 * statistics.median(resets[depth]),
                "setup_s": setup_s[depth],
            }
        )
    shallow = results[0]["step_ms"]
    for r in results:
        r["step_vs_shallowest"] = r["step_ms"] / shallow
    deepest = max(results, key=lambda r: r["depth"])
    return {
        "machine": info,
        "end_load": end_load,
        "results": results,
        "target_met": deepest["step_mean_ms"] < STEP_TARGET_MS if deepest["depth"] >= 1000 else None,
    }


def report(outcome: dict[str, Any]) -> list[str]:
    """The markdown section of RESULTS.md."""
    lines = [
        "## Step overhead against depth",
        "",
        f"`BitWidthEnv.step` (every step but the last of an episode: no evaluation) on MLPs of Linear({WIDTH}, "
        f"{WIDTH}) layers. Target: under {STEP_TARGET_MS:g} ms per step at 1000 layers (judged on the mean).",
        "",
        *machine_lines(outcome["machine"], outcome["end_load"]),
        "",
    ]
    rows = []
    for r in outcome["results"]:
        judged = verdict(r["step_mean_ms"], STEP_TARGET_MS, True) if r["depth"] >= 1000 else ""
        rows.append(
            [
                r["depth"],
                f"{1e3 * r['step_ms']:.1f}",
                f"**{1e3 * r['step_mean_ms']:.1f}** {judged}".rstrip(),
                f"{1e3 * r['step_p99_ms']:.1f}",
                f"{r['step_vs_shallowest']:.2f}x",
                f"{r['reset_ms']:.3f}",
                r["steps_timed"],
                f"{r['setup_s']:.1f}",
            ]
        )
    lines += table(
        [
            "layers",
            "step median µs",
            "step mean µs",
            "step p99 µs",
            "median / shallowest",
            "reset ms",
            "steps timed",
            "building the problem s",
        ],
        rows,
    )
    return lines


def main(argv: Sequence[str] | None = None, write: Writer = write_section) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", nargs="+", type=int, default=list(DEPTHS))
    parser.add_argument("--repeats", type=int, default=30, help="episodes per depth")
    args = parser.parse_args(argv)
    outcome = run(args.depths, args.repeats)
    publish(NAME, report(outcome), write)
    return outcome


if __name__ == "__main__":
    main()
