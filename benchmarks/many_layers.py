"""Deep models: building the problem (every range search included) and an episode, from 10 to 1,000 layers.

Targets (issue 16): on a 500-layer model (``Linear(64, 64)`` and ReLU blocks, 128 calibration samples, 7 x 7
bit pairs), building the problem, every (layer, bits) range included, takes seconds, and then an episode costs at
most 2x one FP32 forward pass of the same model without any hooks; the first episodes cost at most 1.2x the
later ones. Reported: how build time and episode cost grow with depth.

Per depth, the problem is built from Python objects (MSE ranges, the default), timed in three parts: the workload
(model, batches, layer table), the evaluator (the FP32 calibration pass and reference outputs) and the problem
(cost table, budget, and every candidate's quantized weight and activation range, :meth:`QuantSimulator.prepare`).
Then ``first`` is the mean of the first episodes on the fresh environment (random actions, each a new policy), and
``episode`` and ``fp32`` (a copy of the model without hooks, over the same batch) are timed interleaved, the
evaluation cache emptied before each episode so every evaluation runs in full. Torch runs one thread.

Run: ``python benchmarks/many_layers.py [--depths 10 100 500 1000] [--repeats N]``; it rewrites its section of
``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import copy
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

from benchmarks.episode_cost import play, random_actions
from benchmarks.harness import (
    Writer,
    interleaved,
    machine,
    machine_lines,
    median_ms,
    paired_ratio,
    publish,
    table,
    verdict,
    write_section,
)
from mpq_rl.config import parse_config
from mpq_rl.envs import BitWidthEnv
from mpq_rl.runs.assembly import assemble_workload, build_problem
from mpq_rl.search.evaluator import EvaluationCache, Evaluator
from mpq_rl.workloads.model_io import model_outputs

NAME = "many_layers"
THREADS = 1
DEPTHS = (10, 100, 500, 1000)
TARGET_DEPTH = 500
WIDTH = 64
SAMPLES = 128
FIRST_EPISODES = 10
EPISODE_VS_FP32_TARGET = 2.0
"""At 500 layers an episode may cost at most this many FP32 forward passes (the model without hooks)."""
FIRST_VS_STEADY_TARGET = 1.2
"""The first episodes may cost at most this much more than the later ones."""


def blocks(depth: int) -> nn.Module:
    """``depth`` blocks of ``Linear(64, 64)`` and ReLU."""
    torch.manual_seed(depth)
    return nn.Sequential(*[module for _ in range(depth) for module in (nn.Linear(WIDTH, WIDTH), nn.ReLU())])


def measure(depth: int, repeats: int, seed: int = 0) -> dict[str, Any]:
    """Build time in parts, first and steady episode cost against the hook-free FP32 forward, at one depth."""
    generator = torch.Generator().manual_seed(seed)
    model = blocks(depth)
    plain = copy.deepcopy(model)
    inputs = torch.randn(SAMPLES, WIDTH, generator=generator)
    splits = {"calibration": TensorDataset(inputs), "test": TensorDataset(inputs)}
    data = {"name": "none", "calibration_samples": SAMPLES, "batch_size": SAMPLES}
    config = parse_config({"data": data, "proxy": {"metric": "fidelity"}})
    start = time.perf_counter()
    workload = assemble_workload(config, model, splits)
    assembled = time.perf_counter()
    evaluator = Evaluator(workload)
    calibrated = time.perf_counter()
    problem = build_problem(config, workload=workload, evaluator=evaluator)
    built = time.perf_counter()
    env = BitWidthEnv(problem=problem)
    rng = np.random.default_rng(seed)

    first = []
    for _ in range(FIRST_EPISODES):
        actions = random_actions(env, rng)
        began = time.perf_counter()
        play(env, actions)
        first.append(time.perf_counter() - began)

    rounds = [random_actions(env, rng) for _ in range(repeats)]
    played = [0]

    def episode() -> None:
        play(env, rounds[played[0]])
        played[0] += 1

    def fresh_evaluation() -> None:
        evaluator.cache = EvaluationCache()
        evaluator.simulator.restore()

    times = interleaved(
        {"fp32": lambda: model_outputs(plain, workload.calibration), "episode": episode},
        repeats,
        before={"episode": fresh_evaluation},
    )
    evaluator.close()
    simulator = evaluator.simulator
    return {
        "depth": depth,
        "ranges": f"{simulator.cached_weights} weights + {simulator.cached_quantizers} activation ranges",
        "workload_s": assembled - start,
        "calibration_s": calibrated - assembled,
        "problem_s": built - calibrated,
        "build_s": built - start,
        "fp32_ms": median_ms(times["fp32"]),
        "episode_ms": median_ms(times["episode"]),
        "episode_vs_fp32": paired_ratio(times["episode"], times["fp32"]),
        "first_ms": 1e3 * statistics.mean(first),
        "first_vs_steady": statistics.mean(first) / statistics.median(times["episode"]),
        "repeats": repeats,
    }


def run(depths: Sequence[int] = DEPTHS, repeats: int = 20) -> dict[str, Any]:
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        info = machine()
        measure(2, 2)  # loads the compiled kernels, so the first depth's first episodes do not pay for it
        results = [measure(depth, repeats) for depth in depths]
        end_load = machine()["load_average"]
    finally:
        torch.set_num_threads(before)
    return {"machine": info, "end_load": end_load, "results": results}


def report(outcome: dict[str, Any]) -> list[str]:
    lines = [
        "## Deep models: problem build and episode cost from 10 to 1,000 layers",
        "",
        f"`Linear({WIDTH}, {WIDTH})` + ReLU blocks, {SAMPLES} calibration samples, 7 x 7 bit pairs, MSE ranges, "
        f"{THREADS} torch thread. Build = workload + calibration pass + problem (cost table, budget and every "
        "candidate's quantized weight and activation range, searched at build). FP32 = the model without hooks. "
        f"Targets at {TARGET_DEPTH} layers: episode <= {EPISODE_VS_FP32_TARGET}x FP32; first {FIRST_EPISODES} "
        f"episodes <= {FIRST_VS_STEADY_TARGET}x the steady episode (median).",
        "",
        *machine_lines(outcome["machine"], outcome["end_load"]),
        "",
    ]
    rows = []
    for r in outcome["results"]:
        judged = r["depth"] == TARGET_DEPTH
        rows.append(
            [
                r["depth"],
                r["ranges"],
                f"{r['build_s']:.1f}",
                f"{r['workload_s']:.1f} / {r['calibration_s']:.1f} / {r['problem_s']:.1f}",
                f"{r['fp32_ms']:.2f}",
                f"{r['episode_ms']:.2f}",
                f"**{r['episode_vs_fp32']:.2f}x**"
                + (f" ({verdict(r['episode_vs_fp32'], EPISODE_VS_FP32_TARGET, True)})" if judged else ""),
                f"{r['first_ms']:.2f} ({r['first_vs_steady']:.2f}x"
                + (f", {verdict(r['first_vs_steady'], FIRST_VS_STEADY_TARGET, True)})" if judged else ")"),
                r["repeats"],
            ]
        )
    lines += table(
        [
            "layers",
            "cached at build",
            "build s",
            "workload / calibration / problem s",
            "FP32 forward ms",
            "episode ms",
            "episode / FP32 (paired)",
            f"first {FIRST_EPISODES} episodes ms (/ steady)",
            "rounds",
        ],
        rows,
    )
    return lines


def main(argv: Sequence[str] | None = None, write: Writer = write_section) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", nargs="+", type=int, default=list(DEPTHS))
    parser.add_argument("--repeats", type=int, default=20, help="interleaved rounds per depth")
    args = parser.parse_args(argv)
    outcome = run(args.depths, args.repeats)
    publish(NAME, report(outcome), write)
    return outcome


if __name__ == "__main__":
    main()
