"""Evaluation cost of fp and flint policies against integer ones at the same bit-widths, on digits.

Variants, timed interleaved: one evaluation (:meth:`~mpq_rl.search.evaluator.Evaluator.measure`: the policy applied to
the simulator, one forward pass over the calibration batches, the outputs scored) of the uniform policy that puts
every layer at ``W{b}A{b}`` in integers, in fp and in flint, for each bit-width; each policy was evaluated once
before timing, so its quantized weights and activation quantizers are cached (what a search's later episodes
cost), and the simulator is restored before each timed call, so the policy is applied in full. The ratios are the
median over rounds of ``format[r] / int[r]``. One torch thread.

Run: ``python benchmarks/format_cost.py [--repeats N]``; it rewrites its section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import sys
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
    median_ms,
    paired_ratio,
    publish,
    table,
    write_section,
)
from mpq_rl.config import load_config
from mpq_rl.quantization import formats
from mpq_rl.runs.assembly import load_workload
from mpq_rl.search.evaluator import Evaluator

NAME = "format_cost"
BITS = (4, 6)
BEFORE = (
    "Before the compiled table kernel (``torch.bucketize`` in the hook; commit 9660306), runs of this benchmark "
    "alternating with runs of the kernel (load 8 to 16 on 2 cores) measured fp / int 4.76x, 5.61x, 6.01x, 4.08x at "
    "4 bits and 5.84x, 5.58x, 5.79x, 4.61x at 6 bits; flint / int 4.26x, 4.87x, 4.83x, 3.93x and 5.12x, 5.69x, "
    "5.29x, 4.83x. The kernel's two runs: fp / int 1.12x, 1.48x (4 bits) and 1.66x, 1.61x (6 bits); flint / int "
    "1.40x, 1.37x and 1.51x, 1.46x."
)


def run(repeats: int = 30, bits: Sequence[int] = BITS) -> dict[str, Any]:
    torch.set_num_threads(1)
    info = machine()
    workload = load_workload(load_config())
    evaluator = Evaluator(workload)
    results = []
    try:
        for b in bits:
            policies = {
                name: {layer: (code, code) for layer in workload.layers.names}
                for name in formats.FORMAT_NAMES
                for code in [formats.precision_code(name, b)]
            }
            for policy in policies.values():
                evaluator.measure(policy)
            times = interleaved(
                {name: (lambda p=policy: evaluator.measure(p)) for name, policy in policies.items()},
                repeats,
                before=dict.fromkeys(policies, evaluator.simulator.restore),
            )
            results.append(
                {
                    "bits": b,
                    "ms": {name: median_ms(t) for name, t in times.items()},
                    "vs_int": {name: paired_ratio(times[name], times["int"]) for name in policies},
                }
            )
    finally:
        evaluator.close()
    return {"machine": info, "end_load": machine()["load_average"], "repeats": repeats, "results": results}


def report(outcome: dict[str, Any]) -> list[str]:
    rows = [
        [
            r["bits"],
            *(f"{r['ms'][n]:.2f}" for n in formats.FORMAT_NAMES),
            f"{r['vs_int']['fp']:.2f}x",
            f"{r['vs_int']['flint']:.2f}x",
        ]
        for r in outcome["results"]
    ]
    return [
        "## fp and flint evaluation cost against integers (digits)",
        "",
        "One evaluation of the uniform policy at each format and bit-width (tensors cached, policy applied in full, "
        f"one forward pass over the calibration data, scored), one torch thread, {outcome['repeats']} interleaved "
        "rounds; ratios are medians of the per-round ratios.",
        "",
        *machine_lines(outcome["machine"], outcome["end_load"]),
        "",
        *table(["bits", "int ms", "fp ms", "flint ms", "fp / int", "flint / int"], rows),
        "",
        BEFORE,
    ]


def main(argv: Sequence[str] | None = None, write: Writer = write_section) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)
    outcome = run(args.repeats)
    publish(NAME, report(outcome), write)
    return outcome


if __name__ == "__main__":
    main()
