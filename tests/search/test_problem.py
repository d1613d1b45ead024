"""The search problem (mpq_rl.search.problem): one function from a config to a problem, a worker's copy from its spec,
and the budget enforcement a score applies."""

import pytest

from mpq_rl.config import parse_config
from mpq_rl.runs.assembly import build_problem
from mpq_rl.search.enforcement import PENALTY_PER_EXCESS

CONFIG = {
    "hardware": {"preset": "bops", "metric": "bops"},
    "budget": {"fraction": 0.3},
    "quantization": {
        "weight_bits": [2, 4, 8],
        "activation_bits": [4, 8],
        "weight_range": "minmax",
        "activation_range": "minmax",
    },
    "data": {"calibration_samples": 64},
}


@pytest.fixture(scope="module")
def problem(one_thread, digits_model):
    built = build_problem(parse_config(CONFIG))
    yield built
    built.close()


def test_a_worker_builds_the_drivers_problem_from_its_spec(problem):
    worker = problem.spec.build()
    try:
        assert worker.searched == problem.searched
        assert (worker.budget.costs == problem.budget.costs).all()
        top = [problem.budget.top_choice()] * len(problem.searched)
        low = [(0, 0)] * len(problem.searched)
        for choices in (top, low):
            assert worker.score(choices) == problem.score(choices)
    finally:
        worker.close()


def test_a_problem_from_pieces_in_hand_cannot_go_to_workers(problem):
    assert build_problem(parse_config(CONFIG), workload=problem.workload, evaluator=problem.evaluator).spec is None


def test_wall_enforcement_lowers_the_policy_before_it_is_scored(problem):
    top = [problem.budget.top_choice()] * len(problem.searched)
    walled = build_problem(
        parse_config({**CONFIG, "budget": {"fraction": 0.3, "enforcement": "wall"}}),
        workload=problem.workload,
        costs=problem.costs,
        evaluator=problem.evaluator,
    )
    episode = walled.score(top)
    assert episode.within_budget and episode.projected_layers > 0
    assert episode.policy == walled.policy(walled.budget.lower_to_fit(top))


def test_penalty_enforcement_charges_the_relative_excess(problem):
    top = [problem.budget.top_choice()] * len(problem.searched)
    penalized = build_problem(
        parse_config({**CONFIG, "budget": {"fraction": 0.3, "enforcement": "penalty"}}),
        workload=problem.workload,
        costs=problem.costs,
        evaluator=problem.evaluator,
    )
    plain, charged = problem.score(top), penalized.score(top)  # projection does not apply inside score
    ratio = charged.cost_ratio["bops"]
    assert not charged.within_budget and ratio > 0.3
    assert charged.reward == pytest.approx(plain.reward - PENALTY_PER_EXCESS * (ratio / 0.3 - 1.0))
