"""Finetuning that never hurts, measured: held-out top-1 before and after LSQ finetuning of digits policies.

Each row finetunes a fresh copy of the cached digits CNN under one policy and recipe for ``--epochs`` epochs on the
train split less its validation part (:mod:`mpq_rl.deployment.validation`), keeps the best epoch on validation
(the calibrated start included), and reports validation and test top-1 before and after, per seed and as mean ±
sample standard deviation over the seeds. Recipes differ in one choice each: learning rate, weight decay,
distillation from the FP32 model.

Run: ``python benchmarks/finetune_recipe.py [--recipes base kd ...] [--policies W3A3 ...] [--seeds 0 1 2]``; it
prints a Markdown table (docs/results-finetune.md holds the latest).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import machine, machine_lines, table
from mpq_rl.config import load_config
from mpq_rl.deployment.finetune import finetune
from mpq_rl.runs.assembly import load_workload

ROOT = Path(__file__).resolve().parent.parent
RECIPES = {
    "base": {"lr": 1e-3, "distill": 0.0},
    "lr3e-4": {"lr": 3e-4, "distill": 0.0},
    "lr1e-4": {"lr": 1e-4, "distill": 0.0},
    "wd": {"lr": 1e-3, "distill": 0.0, "weight_decay": 1e-4},
    "kd": {"lr": 1e-3, "distill": 1.0},
    "kd-half": {"lr": 1e-3, "distill": 0.5},
    "kd-lr3e-4": {"lr": 3e-4, "distill": 1.0},
}
"""One choice changed at a time from ``base`` (Adam 1e-3, cosine, cross-entropy on labels); ``kd`` is the default
recipe of :func:`mpq_rl.deployment.finetune.finetune`."""
POLICIES = {"W8A8": (8, 8), "W4A4": (4, 4), "W3A3": (3, 3), "W2A4": (2, 4)}


def _points(values: list[float]) -> str:
    mean = statistics.mean(values)
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * mean:.2f} ± {100 * spread:.2f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", choices=sorted(RECIPES), default=["base", "kd"])
    parser.add_argument("--policies", nargs="+", choices=list(POLICIES), default=list(POLICIES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    before_machine = machine()
    workload = load_workload(load_config(ROOT / "experiments" / "configs" / "digits.yaml"))
    start = {k: v.clone() for k, v in workload.model.state_dict().items()}
    rows = []
    for policy_name in args.policies:
        policy = dict.fromkeys(workload.layers.names, POLICIES[policy_name])
        for recipe in args.recipes:
            runs = []
            for seed in args.seeds:
                workload.model.load_state_dict(start)
                result = finetune(workload, policy, args.epochs, seed=seed, **RECIPES[recipe])
                runs.append(result)
                kept = result.validation_kept
                print(
                    f"{policy_name} {recipe} seed {seed}: validation {100 * result.validation[0].top1:.2f} -> "
                    f"{100 * kept.top1:.2f} (epoch {kept.epoch}), test {100 * result.before['top1']:.2f} -> "
                    f"{100 * result.after['top1']:.2f}",
                    flush=True,
                )
            test_before = [r.before["top1"] for r in runs]
            test_after = [r.after["top1"] for r in runs]
            gains = [a - b for a, b in zip(test_after, test_before, strict=True)]
            rows.append(
                [
                    policy_name,
                    recipe,
                    _points([r.validation[0].top1 for r in runs]),
                    _points([r.validation_kept.top1 for r in runs]),
                    _points(test_before),
                    _points(test_after),
                    _points(gains),
                    " ".join(f"{100 * r.before['top1']:.2f}->{100 * r.after['top1']:.2f}" for r in runs),
                    " ".join(str(r.kept_epoch) for r in runs),
                ]
            )
    workload.model.load_state_dict(start)
    header = [
        "policy",
        "recipe",
        "validation before (%)",
        "validation kept (%)",
        "test before (%)",
        "test after (%)",
        "test gain (points)",
        "per seed test",
        "kept epoch",
    ]
    print("\n".join(machine_lines(before_machine, machine()["load_average"])))
    print(
        f"- {args.epochs} epochs, seeds {args.seeds}; recipes: " + "; ".join(f"{k} {RECIPES[k]}" for k in args.recipes)
    )
    print()
    print("\n".join(table(header, rows)))


if __name__ == "__main__":
    main()
