"""A search's dashboard: the Custom Scalars layout, the Pareto view and the layer x episode bits heatmap (Images),
redrawn as the search goes, and the held-out results as a table (Text).

:class:`SearchDashboard` is a :class:`~mpq_rl.runs.recorder.Recorder` listener writing through the run's
TensorBoard writer, so its images follow the scalars when a resumed run purges what the interruption left.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mpq_rl.dashboards.plots import ParetoView, bits_heatmap, pareto_figure
from mpq_rl.hardware.cost_table import METRICS
from mpq_rl.quantization.formats import bits_of, label
from mpq_rl.runs.held_out import HeldOut
from mpq_rl.runs.logger import BEST_COST_RATIO, BEST_PROXY, BEST_REWARD, COST_RATIO, PROXY, REWARD
from mpq_rl.runs.ties import calibration_ties
from mpq_rl.search.episode import Episode
from mpq_rl.search.metrics import format_metric
from mpq_rl.search.problem import SearchProblem

PARETO = "search/pareto"
HEATMAP = "search/bits_heatmap"
HELD_OUT = "held_out/summary"
REDRAWS = 4
"""The Pareto view and the heatmap are drawn at each quarter of the run (and at its end): a few images on the
slider, a few figures' worth of time."""
PPO_LOSSES = ("loss", "policy_gradient_loss", "value_loss", "entropy_loss", "approx_kl", "clip_fraction")
AGENT_CHARTS: dict[str, tuple[str, ...]] = {
    "mbppo": PPO_LOSSES,
    "ppo": PPO_LOSSES,
    "a2c": ("policy_loss", "value_loss", "entropy_loss"),
    "ddpg": ("actor_loss", "critic_loss"),
    "td3": ("actor_loss", "critic_loss"),
    "sac": ("actor_loss", "critic_loss", "ent_coef", "ent_coef_loss"),
}
"""The stable-baselines3 ``train/`` charts each RL searcher writes (one chart each: their scales differ)."""
MBPPO_CHARTS: dict[str, list[str]] = {
    "surrogate rank correlation (Spearman, new evaluations)": [r"mbppo/surrogate/rank_correlation$"],
    "surrogate mean absolute error (new evaluations)": [r"mbppo/surrogate/abs_error$"],
    "evaluated proposals by source (per round)": [r"mbppo/proposals/.*"],
}
"""What :mod:`mpq_rl.agents.learning_board` writes for mbppo."""


def layout(proxies: Sequence[str], costs: Sequence[str], proxy: str, metric: str, budget: float, agent: str):
    """The Custom Scalars layout: one chart per proxy metric and per cost ratio (labelled with the budget), the
    reward, and the searcher's own learning."""

    def chart(tags: list[str]) -> list[Any]:
        return ["Multiline", tags]

    proxy_charts = {
        f"{name} on calibration data" + (" (the proxy; best so far too)" if name == proxy else ""): chart(
            [f"^{PROXY.format(name)}$", *([f"^{BEST_PROXY}$"] if name == proxy else [])]
        )
        for name in proxies
    }
    cost_charts = {
        f"{name} / W8A8" + (f" (budget {budget:g}; best so far too)" if name == metric else ""): chart(
            [f"^{COST_RATIO.format(name)}$", *([f"^{BEST_COST_RATIO}$"] if name == metric else [])]
        )
        for name in costs
    }
    found = {
        "search": {"reward (best so far too)": chart([f"^{REWARD}$", f"^{BEST_REWARD}$"])},
        "proxy metrics": proxy_charts,
        "cost ratios": cost_charts,
    }
    if agent == "mbppo":
        found["mbppo: what it learns"] = {title: chart(tags) for title, tags in MBPPO_CHARTS.items()}
    if agent in AGENT_CHARTS:
        found["agent losses"] = {f"train/{name}": chart([f"^train/{name}$"]) for name in AGENT_CHARTS[agent]}
    return found


class SearchDashboard:
    """Draws the Pareto view and the bits heatmap into ``writer`` as the search goes, and the held-out table at
    the end."""

    def __init__(self, writer: Any, problem: SearchProblem, agent: str, episodes: int, proxy: str) -> None:
        self.writer, self.problem, self.proxy, self.episodes = writer, problem, proxy, episodes
        self.metric, self.budget = problem.metric, problem.budget.fraction
        self.names = problem.searched
        self.numbers: list[int] = []
        self.costs: list[float] = []
        self.proxies: list[float] = []
        self.weights: list[list[int]] = []
        self.activations: list[list[int]] = []
        self.uniform = [
            (_uniform_name(*problem.budget.bits(c[0])), problem.costs.ratios(problem.policy(c))[self.metric])
            for c in problem.budget.uniform_choices()
        ]
        costs = [m for m in METRICS if problem.costs.defines(m)]
        writer.add_custom_scalars(layout(list(problem.evaluator.fp32), costs, proxy, self.metric, self.budget, agent))

    def __call__(self, number: int, episode: Episode, recorder: Any, improved: bool) -> None:
        self.numbers.append(number)
        self.costs.append(float(episode.cost_ratio[self.metric]))
        self.proxies.append(float(episode.proxy))
        self.weights.append([bits_of(episode.policy[n][0]) for n in self.names])
        self.activations.append([bits_of(episode.policy[n][1]) for n in self.names])
        quarter = max(self.episodes // REDRAWS, 1)
        if number % quarter == 0 and number < self.episodes:
            self.draw(recorder, number)

    def draw(self, recorder: Any, number: int, uniform_proxies: Sequence[float | None] | None = None) -> None:
        """The Pareto view and the heatmap of the episodes so far, at step ``number``."""
        if not self.numbers:
            return
        proxies = uniform_proxies or [None] * len(self.uniform)
        best = recorder.best
        view = ParetoView(
            proxy="minus KL (nats)" if self.proxy == "kl" else self.proxy,
            metric=self.metric,
            budget=self.budget,
            costs=self.costs,
            proxies=self.proxies,
            front=[(p["cost_ratio"], p["proxy"]) for p in recorder.pareto.points],
            uniform=[(name, cost, p) for (name, cost), p in zip(self.uniform, proxies, strict=True)],
            best=None if best is None else (float(best.cost_ratio[self.metric]), float(best.proxy)),
        )
        title = f"{len(self.costs)} evaluated policies, episode {number}"
        self.writer.add_figure(PARETO, pareto_figure(view, title), number)
        heatmap = bits_heatmap(
            self.names,
            self.numbers,
            np.array(self.weights),
            np.array(self.activations),
            f"bits chosen per layer, episodes {self.numbers[0]}-{self.numbers[-1]}",
        )
        self.writer.add_figure(HEATMAP, heatmap, number)

    def finish(self, recorder: Any, held_out: HeldOut) -> None:
        """The last Pareto view (with the uniform settings' calibration scores) and the held-out table."""
        measured = {(u["w_bits"], u["a_bits"]): u["proxy"] for u in held_out.uniform}
        pairs = [tuple(self.problem.budget.bits(c[0])) for c in self.problem.budget.uniform_choices()]
        self.draw(recorder, recorder.count, [measured.get(pair) for pair in pairs])
        self.writer.add_text(
            HELD_OUT, held_out_markdown(held_out, self.proxy, self.metric, self.budget), recorder.count
        )


def _uniform_name(w: int, a: int) -> str:
    return f"W{label(w)}A{label(a)}"


def held_out_markdown(held_out: HeldOut, proxy: str, metric: str, budget: float) -> str:
    """The held-out results as a Markdown table (TensorBoard's Text tab renders it), with calibration beside test
    so that a choice made on calibration can be read against its test score."""
    rows = ["| policy | test " + proxy + " | calibration " + proxy + f" | {metric} / W8A8 |", "|---|--:|--:|--:|"]

    def row(name: str, test: dict[str, float], calibration: float, cost: float) -> str:
        calibration = -calibration if proxy == "kl" else calibration  # the proxy is higher-is-better: minus KL
        return (
            f"| {name} | {format_metric(test.get(proxy), proxy)} | {format_metric(calibration, proxy)} | {cost:.3f} |"
        )

    rows.append(f"| FP32 | {format_metric(held_out.fp32_test.get(proxy), proxy)} | - | - |")
    best = held_out.best
    if best is not None and held_out.best_test is not None:
        rows.append(row("**searched (best)**", held_out.best_test, best["proxy"], best["cost_ratio"][metric]))
    for item in held_out.best_per_budget:
        rows.append(row(f"best within {item['budget']:g}", item["test"], item["proxy"], item["cost_ratio"]))
    for item in held_out.uniform:
        name = f"uniform {_uniform_name(item['w_bits'], item['a_bits'])}"
        rows.append(row(name, item["test"], item["proxy"], item["cost_ratio"][metric]))
    notes = calibration_ties(best, held_out.best_test, held_out.uniform, proxy, metric)
    head = f"Held-out test split, budget {budget:g} of W8A8 {metric}. The search chose on calibration data."
    return "\n\n".join([head, "\n".join(rows), *notes])
