"""What a search found: :class:`SearchResult`, its end-of-run report, and ``summary.json`` (written at the end
of a run, read back by :func:`finished_result` so a comparison skips finished runs)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mpq_rl.errors import UserError
from mpq_rl.io import read_json
from mpq_rl.quantization.formats import label
from mpq_rl.runs.logger import TB_DIR
from mpq_rl.runs.recorder import EPISODES_FILE, PARETO_FILE, POLICY_FILE
from mpq_rl.runs.run_folder import versions
from mpq_rl.runs.ties import calibration_ties, tied_uniform
from mpq_rl.search.evaluator import Metrics
from mpq_rl.search.metrics import format_metric
from mpq_rl.text_table import render_table

SUMMARY_FILE = "summary.json"
SUMMARY_FORMAT = "mpq_rl.summary/1"


@dataclass
class SearchResult:
    """What a search found, and where it wrote it."""

    output: Path
    best: dict[str, Any] | None
    """The best in-budget episode (``episode`` number, ``policy``, ``reward``, ``proxy``, costs), None if none fit."""
    best_test: Metrics | None
    """Held-out test metrics of the best policy."""
    fp32_test: Metrics
    uniform: list[dict[str, Any]]
    """Each uniform ``w_bits``/``a_bits`` setting that fits the budget, with ``test`` metrics and ``cost_ratio``."""
    episodes: int
    evaluations: int
    """Distinct policies evaluated on calibration data by the run, every part of a resumed run included."""
    cache_hits: int
    """Episodes answered from the cache."""
    wall_seconds: float
    """Wall time of the run, every part included (an interrupted part up to its last save)."""
    metric: str = "latency"
    budget: float = 0.5
    proxy: str = "top1"
    search: dict[str, Any] = field(default_factory=dict)
    """The searcher's own report (e.g. pre-pass wall times) and ``evaluation_seconds``, the time spent scoring."""
    best_per_budget: list[dict[str, Any]] = field(default_factory=list)
    """With a budget-conditioned searcher: per budget, the best policy found within it, with ``test`` metrics."""
    parts: list[dict[str, Any]] = field(default_factory=list)
    """The run's parts (:class:`~mpq_rl.runs.run_folder.RunParts`): more than one if it was resumed."""

    def report(self) -> str:
        """The end-of-run text: best policy, the comparison table on the test split, and where the results are."""
        lines = []
        if self.best is None:
            lines.append(f"no policy within the budget ({self.budget:g} of W8A8 {self.metric}) was found")
        else:
            bits = "  ".join(f"{n}={label(w)}/{label(a)}" for n, (w, a) in self.best["policy"].items())
            lines.append(
                f"best policy (episode {self.best['episode']} of {self.episodes}, reward {self.best['reward']:.4f}),"
                f" w/a bits: {bits}"
            )

        def test(metrics: Metrics) -> str:
            return format_metric(metrics.get(self.proxy), self.proxy)

        rows = [("policy", f"test {self.proxy}", f"{self.metric} / W8A8", "size / W8A8")]
        rows.append(("FP32", test(self.fp32_test), "-", "-"))
        if self.best is not None and self.best_test is not None:
            ratio = self.best["cost_ratio"]
            rows.append(("searched (best)", test(self.best_test), _f(ratio[self.metric]), _f(ratio.get("size"))))
        for item in self.best_per_budget:
            name = f"best within {item['budget']:g}"
            rows.append((name, test(item["test"]), _f(item["cost_ratio"]), "-"))
        for item in self.uniform:
            ratio = item["cost_ratio"]
            name = f"uniform W{label(item['w_bits'])}A{label(item['a_bits'])}"
            rows.append((name, test(item["test"]), _f(ratio[self.metric]), _f(ratio.get("size"))))
        lines.append(f"held-out test split, budget {self.budget:g} of W8A8 {self.metric}:")
        lines.append(render_table(rows, right=(1, 2, 3)))
        lines.extend(calibration_ties(self.best, self.best_test, self.uniform, self.proxy, self.metric))
        resumed = f" over {len(self.parts)} parts (resumed)" if len(self.parts) > 1 else ""
        lines.append(
            f"{self.episodes} episodes, {self.evaluations} evaluations, {self.cache_hits} cache hits, "
            f"{self.wall_seconds:.1f} s{resumed}"
        )
        lines.append(f"results in {self.output}: {POLICY_FILE}, {SUMMARY_FILE}, {EPISODES_FILE}, {PARETO_FILE}")
        lines.append(f"tensorboard --logdir {self.output / TB_DIR}")
        return "\n".join(lines)


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def finished_result(folder: str | Path) -> SearchResult | None:
    """The result of the finished run in ``folder`` (read back from its ``summary.json``), or None if the run in
    ``folder`` has not finished (the caller checks that it is the run it wants)."""
    folder = Path(folder)
    if not (folder / SUMMARY_FILE).is_file():
        return None
    fix = "delete it, and the next compare resumes the run and redoes its held-out evaluation"
    saved = read_json(folder / SUMMARY_FILE, fix)
    try:
        best = saved["best"]
        return SearchResult(
            output=folder,
            best=best,
            best_test=None if best is None else best["test_metrics"],
            fp32_test=saved["fp32"]["test_metrics"],
            uniform=saved["uniform"],
            episodes=saved["episodes"],
            evaluations=saved["evaluations"],
            cache_hits=saved["cache_hits"],
            wall_seconds=saved["wall_seconds"],
            metric=saved["budget"]["metric"],
            budget=saved["budget"]["fraction"],
            proxy=saved["proxy"],
            search=saved.get("search", {}),
            best_per_budget=saved.get("best_per_budget", []),
            parts=saved.get("parts", []),
        )
    except (KeyError, TypeError):
        raise UserError(f"{folder / SUMMARY_FILE} is not a run summary: {fix}") from None


def summary(result: SearchResult, agent: str, seed: int, enforcement: str) -> dict[str, Any]:
    """The content of ``summary.json``: ``result`` of the searcher ``agent`` with ``seed``, its budget enforced by
    ``enforcement``."""
    return {
        "format": SUMMARY_FORMAT,
        "best": result.best,
        "fp32": {"test_metrics": result.fp32_test},
        "uniform": result.uniform,
        "uniform_ties": tied_uniform(result.best, result.uniform, result.metric),
        "budget": {"metric": result.metric, "fraction": result.budget, "enforcement": enforcement},
        "proxy": result.proxy,
        "agent": agent,
        "seed": seed,
        "episodes": result.episodes,
        "evaluations": result.evaluations,
        "cache_hits": result.cache_hits,
        "wall_seconds": round(result.wall_seconds, 3),
        "search": result.search,
        "best_per_budget": result.best_per_budget,
        "parts": result.parts,
        "versions": versions(),
    }
