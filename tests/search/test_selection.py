"""Picking the reported policy on a held-aside selection split: the split, the candidates and the rules."""

import dataclasses

import pytest

from mpq_rl.agents import build_searcher
from mpq_rl.config import parse_config
from mpq_rl.errors import UserError
from mpq_rl.runs.assembly import build_problem
from mpq_rl.search.episode import Episode
from mpq_rl.search.searcher import SearchContext
from mpq_rl.search.selection import held_aside, pick, top_candidates
from mpq_rl.search.subsets import SubsetScorer
from mpq_rl.workloads.digits import trained_digits_cnn


def episode(reward, bits, cost, within=True):
    return Episode(
        reward=reward,
        policy={"a": (bits, 8), "b": (8, 8)},
        metrics={"top1": reward},
        proxy=reward,
        proxy_fp32=1.0,
        cost={"latency": cost},
        cost_ratio={"latency": cost},
        within_budget=within,
    )


def test_top_candidates_are_distinct_in_budget_best_first_ties_to_the_cheaper():
    episodes = [
        episode(0.9, 4, 0.4),
        episode(0.95, 6, 0.6, within=False),
        episode(0.9, 3, 0.3),
        episode(0.9, 4, 0.4),  # the same policy again
        episode(0.8, 2, 0.2),
        episode(0.92, 5, 0.5),
    ]
    ranked = top_candidates(episodes, 3, "latency")
    assert [e.policy["a"][0] for e in ranked] == [5, 3, 4]
    assert top_candidates([episode(0.9, 4, 0.4, within=False)], 3, "latency") == []


@pytest.fixture(scope="module")
def split_problem(digits_workload, digits_costs, model_cache, one_thread):
    """The digits problem searching on three quarters of the calibration split, and a scorer for the rest."""
    search, selection = held_aside(digits_workload.calibration, 0.25, seed=0)
    # a model of its own (loaded from the cache): the session's shared evaluator already simulates the shared one
    model = trained_digits_cnn(model_cache)
    workload = dataclasses.replace(digits_workload, model=model, calibration=search)
    problem = build_problem(parse_config({"budget": 0.3}), workload=workload, costs=digits_costs)
    yield problem, SubsetScorer(problem, selection)
    problem.close()


def test_the_split_is_disjoint_seeded_and_sized(digits_workload, split_problem):
    problem, selection = split_problem
    calibration = digits_workload.calibration
    assert problem.evaluator.calibration.num_samples + selection.samples == calibration.num_samples
    assert selection.samples == round(0.25 * calibration.num_samples)
    with pytest.raises(UserError, match="fraction in \\(0, 1\\)"):
        held_aside(calibration, 1.0, seed=0)


def test_rules_choose_among_the_top_k_by_their_own_scores(split_problem):
    problem, selection = split_problem
    recorded = []
    context = SearchContext(problem=problem, episodes=30, seed=2, record=recorded.append, output=None)
    build_searcher("random").search(context)
    candidates = top_candidates(recorded, 5, problem.metric)
    held = [m["top1"] for m in selection.score([e.policy for e in candidates])]
    top1 = pick(recorded, "top1", problem)
    assert top1.episode is candidates[0] and top1.selection_proxy is None and top1.rescored == 0
    chosen = pick(recorded, "selection", problem, selection, k=5)
    assert chosen.rescored == len(candidates) and chosen.episode in candidates
    assert chosen.selection_proxy == max(held)
    n, m = problem.evaluator.calibration.num_samples, selection.samples
    pooled = [(n * e.proxy + m * h) / (n + m) for e, h in zip(candidates, held, strict=True)]
    assert pooled[candidates.index(pick(recorded, "pooled", problem, selection, k=5).episode)] == max(pooled)
    with pytest.raises(UserError, match="unknown selection rule"):
        pick(recorded, "best", problem, selection)
