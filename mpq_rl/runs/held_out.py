"""Held-out scores at the end of a search: the best policy, FP32, the best policy per budget and every uniform
setting within the budget, on the test split (the search itself saw calibration data only)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mpq_rl.search.budget import within_fraction
from mpq_rl.search.evaluator import Metrics, evaluate_on_test
from mpq_rl.search.problem import SearchProblem
from mpq_rl.runs.recorder import Recorder
from mpq_rl.search.rewards import proxy_value


def _pairs(policy: dict[str, Any]) -> dict[str, tuple[int, int]]:
    return {name: (int(w), int(a)) for name, (w, a) in policy.items()}


def best_per_budget(front: list[dict[str, Any]], budgets: list[float]) -> list[dict[str, Any]]:
    """For each budget, the Pareto point with the best proxy within it (ties: the cheaper); budgets that no
    evaluated policy fits are left out. ``front`` is :attr:`Recorder.pareto`'s points."""
    found = []
    for fraction in budgets:
        fitting = [p for p in front if within_fraction(p["cost_ratio"], fraction)]
        if not fitting:
            continue
        point = max(fitting, key=lambda p: (p["proxy"], -p["cost_ratio"]))
        found.append(
            {
                "budget": fraction,
                "episode": point["episode"],
                "proxy": point["proxy"],
                "cost_ratio": point["cost_ratio"],
                "policy": point["policy"],
            }
        )
    return found


def uniform_baselines(problem: SearchProblem) -> list[dict[str, Any]]:
    """Every uniform setting among the candidates that fits the budget (costliest first, as the ``uniform`` searcher
    proposes them), with its held-out test metrics and its
    calibration ``metrics`` and ``proxy`` (higher is better): comparisons pick the best uniform setting on the
    calibration proxy, as a searcher would, not on the test split."""
    found = []
    for choices in problem.budget.uniform_choices():
        policy = problem.policy(choices)
        w, a = problem.budget.bits(choices[0])
        ratios = problem.costs.ratios(policy)
        metrics = problem.evaluator.measure(policy)
        test = evaluate_on_test(problem.workload, policy, problem.evaluator.simulator)
        proxy = proxy_value(metrics, problem.proxy)
        found.append({"w_bits": w, "a_bits": a, "test": test, "metrics": metrics, "proxy": proxy, "cost_ratio": ratios})
    return found


@dataclass
class HeldOut:
    """The test-split metrics a finished search reports."""

    fp32_test: Metrics
    best: dict[str, Any] | None
    """The best in-budget episode's sections and policy, with its ``test_metrics``; None if none fit."""
    best_test: Metrics | None
    best_per_budget: list[dict[str, Any]]
    uniform: list[dict[str, Any]]


def held_out_scores(problem: SearchProblem, recorder: Recorder, budgets: list[float]) -> HeldOut:
    """Score on the test split the recorder's best policy, FP32, the best policy within each of ``budgets`` (when a
    budget-conditioned searcher searched more than one) and the uniform settings within the budget."""
    simulator = problem.evaluator.simulator
    fp32_test = evaluate_on_test(problem.workload, {}, simulator)
    best, best_test = None, None
    if recorder.best is not None:
        best = {**recorder.best.sections(recorder.best_number), "policy": recorder.best.to_json()["policy"]}
        best_test = evaluate_on_test(problem.workload, recorder.best.policy, simulator)
        best["test_metrics"] = best_test
    per_budget = best_per_budget(recorder.pareto.points, budgets) if len(budgets) > 1 else []
    for item in per_budget:
        item["test"] = evaluate_on_test(problem.workload, _pairs(item["policy"]), simulator)
    return HeldOut(fp32_test, best, best_test, per_budget, uniform_baselines(problem))
