"""Turn finished ``mpq-rl compare`` folders into one results page with its plots (docs/results.md).

    python experiments/collect_results.py runs/compare-0.25 runs/compare-0.35 runs/compare-0.5

Each folder's table is rendered from its ``compare.json`` (the same renderer as ``mpq-rl compare``), its Pareto
plot copied next to the page, and the command that reproduces it written above the table.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from mpq_rl.io import atomic_write_text
from mpq_rl.runs.compare import COMPARE_JSON, PARETO_PNG, render_markdown, uniform_row
from mpq_rl.search.metrics import format_metric

DEFAULT_OUTPUT = Path("docs/results.md")


def section(folder: Path, page: Path, config: str | None = None) -> list[str]:
    """One compare folder as markdown: the command (with ``--config`` if one was used), the table, and the plot."""
    comparison = json.loads((folder / COMPARE_JSON).read_text())
    plot = page.parent / "results" / f"{folder.name}-{PARETO_PNG}"
    plot.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(folder / PARETO_PNG, plot)
    command = (
        "mpq-rl compare "
        + (f"--config {config} " if config else "")
        + f"--agents {','.join(comparison['agents'])} --seeds {','.join(map(str, comparison['seeds']))} "
        f"--episodes {comparison['episodes']} --budget {comparison['budget']:g} --output {folder}"
    )
    table = render_markdown(comparison).replace("\n# ", "\n## ")
    table = "#" + table if table.startswith("# ") else table
    return [table.rstrip(), "", f"Reproduce: `{command}`", "", f"![Pareto fronts]({plot.relative_to(page.parent)})", ""]


def overview(comparisons: list[dict]) -> list[str]:
    """One table across budgets: the held-out proxy score of each searcher's best policy, of each seed's uniform
    setting that fits the same budget with the best calibration proxy (chosen as a searcher would), and of FP32."""
    budgets = [f"{c['budget']:g}" for c in comparisons]
    metric, proxy = comparisons[0]["metric"], comparisons[0]["proxy"]
    header = "| searcher | " + " | ".join(f"{b} of W8A8 {metric}" for b in budgets) + " |"
    lines = [header, "|---|" + "---:|" * len(budgets)]
    agents = list(dict.fromkeys(a for c in comparisons for a in c["agents"]))
    for agent in agents:
        cells = []
        for comparison in comparisons:
            row = next((r for r in comparison["summary"] if r["agent"] == agent), None)
            if row is None:
                cells.append("not run")
                continue
            cells.append(f"{format_metric(row['test_mean'], proxy)} ± {format_metric(row['test_std'], proxy)}")
        lines.append(f"| {agent} | " + " | ".join(cells) + " |")
    best_uniform = []
    for comparison in comparisons:
        settings, mean, std = uniform_row(comparison)
        fits = mean is not None
        best_uniform.append(
            f"{format_metric(mean, proxy)} ± {format_metric(std, proxy)} ({settings})" if fits else settings
        )
    lines.append("| best uniform that fits (on calibration) | " + " | ".join(best_uniform) + " |")
    lines.append("| FP32 | " + " | ".join(format_metric(c["fp32_test"], proxy) for c in comparisons) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="finished mpq-rl compare output folders")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="the results page to write")
    parser.add_argument("--config", help="the --config the compare runs were made with, for the commands shown")
    args = parser.parse_args()
    comparisons = [json.loads((folder / COMPARE_JSON).read_text()) for folder in args.folders]
    lines = ["# Results", "", "Written by `experiments/collect_results.py` from `mpq-rl compare` folders.", ""]
    proxy = comparisons[0]["proxy"]
    lines += [f"Held-out {proxy} of each searcher's best in-budget policy (mean ± std over seeds):", ""]
    lines += [*overview(comparisons), ""]
    for folder in args.folders:
        lines += section(folder, args.output, args.config)
    atomic_write_text(args.output, "\n".join(lines))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
