"""GPU check: the same digits policies scored on the CPU and on a CUDA GPU agree, and how long each device takes.

The digits problem (the default config, seed 0) is built once per device (``device: cpu`` and ``device: cuda``):
model, batches, every candidate's quantized weight and range on that device. The same seeded random policies,
the uniform settings among them, are scored on both; the proxy metrics must agree within a tolerance (the GPU
runs PyTorch's kernels and reduces in another order, so a few calibration samples near a decision boundary may
flip), and the best policy's held-out test scores are compared too. Timings: the build and the evaluations of
each device, side by side. Without a GPU it prints one line saying so and exits 0.

Run: ``python benchmarks/gpu_check.py [--policies N]``; with a GPU it rewrites its section of
``benchmarks/RESULTS.md`` and exits 1 if a policy's scores differ beyond the tolerance.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import Writer, machine, machine_lines, publish, table, write_section
from mpq_rl.config import parse_config
from mpq_rl.runs.assembly import build_problem
from mpq_rl.search.evaluator import evaluate_on_test
from mpq_rl.search.problem import SearchProblem

NAME = "gpu_check"
DEVICES = ("cpu", "cuda")
TOLERANCE = {"top1": 0.01, "agreement": 0.01, "cosine": 1e-3, "kl": 5e-3}
"""Largest absolute difference allowed between the devices' scores of one policy (top-1 and agreement: 4 of the
400 calibration samples)."""


def policies(problem: SearchProblem, count: int, seed: int = 0) -> list[list[tuple[int, int]]]:
    """The uniform settings, then seeded random choices, one per searched layer."""
    budget = problem.budget
    rng = np.random.default_rng(seed)
    chosen = budget.uniform_choices()
    while len(chosen) < count:
        chosen.append(
            [
                (int(rng.integers(len(budget.weight_codes))), int(rng.integers(len(budget.activation_codes))))
                for _ in problem.searched
            ]
        )
    return chosen[:count]


def run(count: int) -> dict[str, Any]:
    torch.set_num_threads(1)
    info = machine()
    problems, build_s = {}, {}
    for device in DEVICES:
        start = time.perf_counter()
        problems[device] = build_problem(parse_config({"device": device}))
        build_s[device] = time.perf_counter() - start
    chosen = policies(problems["cpu"], count)
    scores: dict[str, list[dict[str, float]]] = {device: [] for device in DEVICES}
    seconds = dict.fromkeys(DEVICES, 0.0)
    for choices in chosen:  # the devices in turn on each policy, so a burst of load hits both alike
        for device in DEVICES:
            start = time.perf_counter()
            scores[device].append(problems[device].score(choices).metrics)
            if device == "cuda":
                torch.cuda.synchronize()
            seconds[device] += time.perf_counter() - start
    worst = {
        key: max(abs(a[key] - b[key]) for a, b in zip(scores["cpu"], scores["cuda"], strict=True))
        for key in scores["cpu"][0]
        if key in TOLERANCE
    }
    best = max(range(len(chosen)), key=lambda i: (scores["cpu"][i]["top1"], -i))
    test = {}
    for device, problem in problems.items():
        policy = problem.policy(chosen[best])
        test[device] = evaluate_on_test(problem.workload, policy, problem.evaluator.simulator)
        problem.close()
    return {
        "machine": info,
        "end_load": machine()["load_average"],
        "gpu": torch.cuda.get_device_name(0),
        "policies": len(chosen),
        "build_s": build_s,
        "evaluation_ms": {d: 1e3 * s / len(chosen) for d, s in seconds.items()},
        "worst_difference": worst,
        "agree": all(worst[key] <= TOLERANCE[key] for key in worst),
        "best_test": test,
    }


def report(outcome: dict[str, Any]) -> list[str]:
    lines = [
        "## GPU check: digits on the CPU and on a CUDA GPU",
        "",
        f"GPU: {outcome['gpu']}. {outcome['policies']} policies (the uniform settings, then seeded random ones) "
        "scored on both devices; largest difference of each proxy metric against its tolerance, and the held-out "
        "scores of the best policy (by CPU calibration top-1) on both. One torch thread on the CPU.",
        "",
        *machine_lines(outcome["machine"], outcome["end_load"]),
        "",
    ]
    lines += table(
        ["device", "build s", "evaluation ms", "best policy test top-1"],
        [
            [d, f"{outcome['build_s'][d]:.1f}", f"{outcome['evaluation_ms'][d]:.2f}", outcome["best_test"][d]["top1"]]
            for d in DEVICES
        ],
    )
    lines.append("")
    lines += table(
        ["metric", "largest |CPU - GPU|", "tolerance"],
        [[key, f"{value:.5f}", TOLERANCE[key]] for key, value in outcome["worst_difference"].items()],
    )
    lines += ["", f"- the devices agree within tolerance: {outcome['agree']}"]
    return lines


def main(argv: Sequence[str] | None = None, write: Writer = write_section) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", type=int, default=60, help="policies scored on each device")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: skipped: PyTorch sees no CUDA GPU on this machine (run it where there is one)")
        return 0
    outcome = run(args.policies)
    publish(NAME, report(outcome), write)
    return 0 if outcome["agree"] else 1


if __name__ == "__main__":
    sys.exit(main())
