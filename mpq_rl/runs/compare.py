"""``mpq-rl compare``: several searchers on one config and budget, at the same evaluation budget, over seeds.

Each (searcher, seed) is an ordinary run (:func:`mpq_rl.runs.trainer.run_search`) in ``OUTPUT/{name}-seed{seed}``, so
every run folder can be inspected or resumed on its own; with ``parallel.backend: ray`` the runs are Ray tasks on
the cluster (:mod:`mpq_rl.runs.compare_on_ray`), with the same folders and results. The comparison then writes
``compare.md`` (per searcher: held-out score of the best in-budget policy, mean and standard deviation over seeds;
its calibration proxy; its cost ratio; evaluations; wall time), ``compare.json`` (the same, and every run) and
``pareto.png`` (each searcher's calibration Pareto front, and the held-out score of each run's best policy against
its cost).
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from mpq_rl.config import RunConfig
from mpq_rl.errors import UserError
from mpq_rl.io import atomic_write_json, atomic_write_text
from mpq_rl.quantization.formats import label
from mpq_rl.search.metrics import format_metric
from mpq_rl.search.pool import resolve_parallel

COMPARE_MD = "compare.md"
COMPARE_JSON = "compare.json"
PARETO_PNG = "pareto.png"
FORMAT = "mpq_rl.compare/1"
RUN_ON_ONE_CPU = {"parallel.backend": "local", "parallel.workers": None, "parallel.address": None}
"""The ``parallel`` section of each run of a comparison on a Ray cluster: the runs are what runs in parallel."""


def run_folder(output: Path, name: str, seed: int) -> Path:
    return output / f"{name}-seed{seed}"


def _check_output(output: Path) -> None:
    """Refuse, before anything runs, an ``--output`` that holds anything but a comparison's own files and run
    folders: a folder of someone else's files is never written into."""
    from mpq_rl.runs.run_folder import LOCK_FILE, holds_run, is_run_folder
    from mpq_rl.safe_files import check_tree

    check_tree(output)
    if output.exists() and not output.is_dir():
        raise UserError(f"--output {output} is a file, not a folder: pick a folder path")
    if not output.is_dir():
        return
    own = {COMPARE_MD, COMPARE_JSON, PARETO_PNG}
    for path in sorted(output.iterdir()):
        runs = path.is_dir() and (
            is_run_folder(path) or holds_run(path) or all(p.name == LOCK_FILE for p in path.iterdir())
        )
        if not (path.name in own or runs):
            raise UserError(
                f"{output} holds {path.name!r}, which is not part of an mpq-rl comparison: pick a new or empty "
                "--output folder (nothing was changed)"
            )


def compare(
    config: RunConfig, agents: Sequence[str], seeds: Sequence[int], output: str | Path, progress: bool = False
) -> dict[str, Any]:
    """Run every searcher in ``agents`` once per seed on ``config``; write and return the comparison.

    Runs already finished in ``output`` with the same config are read back, not repeated, and an interrupted one
    is resumed: a comparison cut short (Ctrl-C, a crash, a killed job) continues where it stopped. Each run holds
    its folder's lock, so a second comparison on ``output`` is refused at the first run still in progress.
    """
    from mpq_rl.agents import SEARCHERS
    from mpq_rl.runs.run_folder import CONFIG_FILE, run_config
    from mpq_rl.runs.summary import finished_result
    from mpq_rl.runs.trainer import run_search

    for name in agents:
        SEARCHERS.resolve(name)  # an unknown name stops the comparison before any run
    if not agents or not seeds:
        raise UserError("compare needs at least one agent and one seed")
    output = Path(output)
    _check_output(output)
    parallel = resolve_parallel(config.parallel, config.agent.n_envs)
    on_ray = parallel.backend == "ray"
    if on_ray:  # the runs share the cluster's CPUs, each evaluating in its own task
        config = config.with_overrides(**RUN_ON_ONE_CPU)
    grid = [(name, seed) for name in agents for seed in seeds]

    def announce(index: int) -> None:
        if progress and not on_ray:
            name, seed = grid[index]
            print(f"mpq-rl: run {index + 1} of {len(grid)}: agent {name}, seed {seed}", file=sys.stderr, flush=True)

    found: dict[int, Any] = {}
    pending: list[tuple[int, RunConfig, Path | None]] = []
    for index, (name, seed) in enumerate(grid):
        folder = run_folder(output, name, seed)
        run = config.with_overrides(**{"agent.name": name, "seed": seed, "output": str(folder)})
        same_run = (folder / CONFIG_FILE).is_file() and run_config(folder).same_search(run)
        result = finished_result(folder) if same_run else None
        if result is not None:
            announce(index)
            print(f"mpq-rl: {folder} holds this run finished: reading it back", file=sys.stderr)
            found[index] = result
        else:
            pending.append((index, run, folder if same_run else None))
    if on_ray:
        from mpq_rl.runs.compare_on_ray import run_on_ray

        jobs = [(index, partial(run_search, run, resume=resume, progress=False)) for index, run, resume in pending]
        found.update(run_on_ray(jobs, parallel, progress))
    else:
        for index, run, resume in pending:
            announce(index)
            found[index] = run_search(run, resume=resume, progress=progress)
    results = [found[index] for index in range(len(grid))]
    runs = [_run_row(name, seed, result) for (name, seed), result in zip(grid, results, strict=True)]
    last = results[-1]
    comparison = {
        "format": FORMAT,
        "metric": last.metric,
        "budget": last.budget,
        "proxy": last.proxy,
        "episodes": config.agent.episodes,
        "agents": list(agents),
        "seeds": list(seeds),
        "fp32_test": last.fp32_test.get(last.proxy),
        "uniform": [
            {
                "w_bits": u["w_bits"],
                "a_bits": u["a_bits"],
                "test": u["test"].get(last.proxy),
                "proxy": u["proxy"],
                "cost_ratio": u["cost_ratio"][last.metric],
            }
            for u in last.uniform
        ],
        # the seed draws the calibration split, so the uniform baselines differ by seed (not by searcher)
        "uniform_chosen": [
            _best_uniform(seed, result) for seed, result in zip(seeds, results, strict=False) if result.uniform
        ],
        "summary": [_aggregate(name, [r for r in runs if r["agent"] == name]) for name in agents],
        "runs": runs,
    }
    atomic_write_json(output / COMPARE_JSON, comparison)
    atomic_write_text(output / COMPARE_MD, render_markdown(comparison))
    plot_pareto(comparison, output, output / PARETO_PNG)
    return comparison


def _run_row(name: str, seed: int, result: Any) -> dict[str, Any]:
    best = result.best
    return {
        "agent": name,
        "seed": seed,
        "folder": str(result.output),
        "found": best is not None,
        "test": None if result.best_test is None else result.best_test.get(result.proxy),
        "proxy": None if best is None else best["proxy"],
        "cost_ratio": None if best is None else best["cost_ratio"][result.metric],
        "episodes": result.episodes,
        "evaluations": result.evaluations,
        "wall_seconds": result.wall_seconds,
    }


def _best_uniform(seed: int, result: Any) -> dict[str, Any]:
    """The uniform setting that fits with the best calibration proxy in ``result``, as a searcher would pick it."""
    best = max(result.uniform, key=lambda u: u["proxy"])
    return {
        "seed": seed,
        "w_bits": best["w_bits"],
        "a_bits": best["a_bits"],
        "test": best["test"].get(result.proxy),
        "proxy": best["proxy"],
        "cost_ratio": best["cost_ratio"][result.metric],
    }


def uniform_row(comparison: dict[str, Any]) -> tuple[str, float | None, float | None]:
    """The settings (``W4A4, W4A3``), and the held-out mean and std over seeds, of each seed's best uniform setting
    chosen on calibration; ``("none fits", None, None)`` if no uniform setting fits the budget."""
    chosen = comparison["uniform_chosen"]
    if not chosen:
        return "none fits", None, None
    settings = ", ".join(dict.fromkeys(f"W{label(c['w_bits'])}A{label(c['a_bits'])}" for c in chosen))
    return settings, *_mean_std([c["test"] for c in chosen])


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _aggregate(name: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    found = [r for r in runs if r["found"]]
    test_mean, test_std = _mean_std([r["test"] for r in found if r["test"] is not None])
    return {
        "agent": name,
        "runs": len(runs),
        "found": len(found),
        "test_mean": test_mean,
        "test_std": test_std,
        "proxy_mean": _mean_std([r["proxy"] for r in found])[0],
        "cost_ratio_mean": _mean_std([r["cost_ratio"] for r in found])[0],
        "evaluations_mean": statistics.fmean(r["evaluations"] for r in runs),
        "episodes_mean": statistics.fmean(r["episodes"] for r in runs),
        "wall_seconds_mean": statistics.fmean(r["wall_seconds"] for r in runs),
    }


def render_markdown(comparison: dict[str, Any]) -> str:
    """The comparison as a markdown table, one row per searcher (seeds aggregated)."""
    proxy, metric = comparison["proxy"], comparison["metric"]
    seeds = ", ".join(map(str, comparison["seeds"]))
    lines = [
        f"# mpq-rl compare: budget {comparison['budget']:g} of W8A8 {metric}",
        "",
        f"{comparison['episodes']} evaluations per run, seeds {seeds}; best in-budget policy of each run, "
        f"held-out test {proxy} (mean ± std over seeds) and calibration proxy.",
        "",
        f"| searcher | test {proxy} | ± std | proxy {proxy} | {metric} / W8A8 | in budget | episodes | evaluations"
        " | wall s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in comparison["summary"]:
        std = "-" if row["test_std"] is None else format_metric(row["test_std"], proxy)
        cost = "-" if row["cost_ratio_mean"] is None else f"{row['cost_ratio_mean']:.3f}"
        lines.append(
            f"| {row['agent']} | {format_metric(row['test_mean'], proxy)} | {std} "
            f"| {format_metric(row['proxy_mean'], proxy)} "
            f"| {cost} | {row['found']}/{row['runs']} | {row['episodes_mean']:.0f} | {row['evaluations_mean']:.1f} "
            f"| {row['wall_seconds_mean']:.1f} |"
        )
    settings, mean, std = uniform_row(comparison)
    chosen = comparison["uniform_chosen"]
    proxy_mean, cost_mean = (_mean_std([c[k] for c in chosen])[0] for k in ("proxy", "cost_ratio"))
    cost = "-" if cost_mean is None else f"{cost_mean:.3f}"
    lines.append(
        f"| best uniform on calibration ({settings}) | {format_metric(mean, proxy)} | {format_metric(std, proxy)} "
        f"| {format_metric(proxy_mean, proxy)} | {cost} | {len(chosen)}/{len(comparison['seeds'])} | - | - | - |"
    )
    lines.append(f"| FP32 | {format_metric(comparison['fp32_test'], proxy)} | - | - | - | - | - | - | - |")
    return "\n".join(lines) + "\n"


def plot_pareto(comparison: dict[str, Any], output: Path, path: Path) -> None:
    """``pareto.png``: calibration Pareto fronts per searcher (left), held-out score of each best policy (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mpq_rl.runs.recorder import PARETO_FILE

    proxy, metric, budget = comparison["proxy"], comparison["metric"], comparison["budget"]
    figure, (front_ax, test_ax) = plt.subplots(1, 2, figsize=(11, 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, name in enumerate(comparison["agents"]):
        colour = colours[i % len(colours)]
        points = []
        for seed in comparison["seeds"]:
            file = run_folder(output, name, seed) / PARETO_FILE
            if file.is_file():
                points += json.loads(file.read_text())["points"]
        front = _front([(p["cost_ratio"], p["proxy"]) for p in points])
        if front:
            front_ax.step(*zip(*front, strict=True), where="post", color=colour, label=name, marker=".")
        runs = [r for r in comparison["runs"] if r["agent"] == name and r["test"] is not None]
        test_ax.scatter([r["cost_ratio"] for r in runs], [r["test"] for r in runs], color=colour, label=name)
    for ax in (front_ax, test_ax):
        ax.axvline(budget, color="grey", linestyle="--", linewidth=1)
        ax.set_xlabel(f"{metric} / W8A8")
    if comparison["fp32_test"] is not None:
        test_ax.axhline(comparison["fp32_test"], color="black", linewidth=1, label="FP32")
    uniform = comparison["uniform"]
    if uniform:
        test_ax.scatter(
            [u["cost_ratio"] for u in uniform],
            [u["test"] for u in uniform],
            marker="x",
            color="grey",
            label="uniform W/A settings",
        )
    front_ax.set_ylabel(f"calibration {proxy}")
    front_ax.set_title("Pareto front of every episode (all seeds)")
    test_ax.set_ylabel(f"test {proxy}")
    test_ax.set_title("best in-budget policy of each run")
    front_ax.legend(fontsize="small")
    test_ax.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (cost, score) points not beaten on both, by increasing cost."""
    front: list[tuple[float, float]] = []
    for cost, score in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or score > front[-1][1]:
            front.append((cost, score))
    return front
