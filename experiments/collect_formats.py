"""The formats comparison table of docs/results-formats.md, from ``mpq-rl compare`` folders.

    python experiments/collect_formats.py runs/compare-digits-formats_int-0.25 runs/compare-digits-formats-0.25 ...

Folders are named ``compare-<model>-<variant>-<budget>`` (variant ``formats_int`` for ``[int]``, ``formats`` for
``[int, fp, flint]``). Prints one markdown row per folder: held-out metric of the best in-budget policy (mean ±
std over seeds), its cost, and which formats its layers use (weights and activations, over all seeds).
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

VARIANTS = {"formats_int": "[int]", "formats": "[int, fp, flint]"}


def row(folder: Path) -> str:
    comparison = json.loads((folder / "compare.json").read_text())
    model, variant = folder.name.removeprefix("compare-").rsplit("-", 1)[0].split("-", 1)
    summary = comparison["summary"][0]
    usage: collections.Counter[str] = collections.Counter()
    for run in comparison["runs"]:
        policy = json.loads((Path(run["folder"]) / "policy.json").read_text())
        for layer in policy["layers"]:
            usage.update([layer.get("w_format", "int"), layer.get("a_format", "int")])
    total = sum(usage.values())
    shares = ", ".join(f"{name} {count / total:.0%}" for name, count in usage.most_common())
    cells = [
        model,
        f"{comparison['budget']:g}",
        VARIANTS[variant],
        f"{summary['test_mean']:.2%} ± {summary['test_std']:.2%}",
        f"{summary['proxy_mean']:.2%}",
        f"{summary['cost_ratio_mean']:.3f}",
        f"{summary['found']}/{summary['runs']}",
        str(comparison["episodes"]),
        shares,
    ]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    args = parser.parse_args()
    print(
        "| model | budget | formats | held-out (mean ± std, 3 seeds) | proxy (calibration) | cost / W8A8 | in budget "
        "| evaluations | formats used (layers x {w, a}) |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---|")
    for folder in args.folders:
        print(row(folder))


if __name__ == "__main__":
    main()
