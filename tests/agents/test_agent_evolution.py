"""The evolution searcher: budget-keeping mutations, every layer reachable, subset selection counted, seeded."""

import dataclasses

import numpy as np
import pytest

from mpq_rl.agents import build_searcher
from mpq_rl.agents.evolution import Evolution, filled, mutate
from mpq_rl.config import parse_config
from mpq_rl.errors import UserError
from mpq_rl.runs.assembly import build_problem
from mpq_rl.search.searcher import SearchContext
from mpq_rl.search.subsets import SubsetScorer, select_samples, split_samples


@pytest.fixture(scope="module")
def problem(digits_workload, digits_costs, digits_evaluator, one_thread):
    """Every digits layer searched, weights at 2/4/6/8 bits and activations at 4/6/8, at 0.3 of W8A8 latency."""
    config = parse_config({"quantization": {"weight_bits": [2, 4, 6, 8], "activation_bits": [4, 6, 8]}, "budget": 0.3})
    return build_problem(config, workload=digits_workload, costs=digits_costs, evaluator=digits_evaluator)


def run(problem, episodes, seed=0, **kwargs):
    recorded = []
    context = SearchContext(problem=problem, episodes=episodes, seed=seed, record=recorded.append, output=None)
    build_searcher("evolution", kwargs).search(context)
    return recorded, context.report


def test_mutations_always_fit_the_budget_and_reach_every_layer_both_ways(problem):
    budget = problem.budget
    rng = np.random.default_rng(0)
    parent = filled(budget.projected([(0, 0)] * len(budget.names)), budget, rng)
    assert budget.fits(parent)
    raised, lowered = set(), set()
    for _ in range(600):
        child = mutate(parent, budget, rng, switches=3)
        assert child is not None and budget.fits(child) and child != parent
        for s, (old, new) in enumerate(zip(parent, child, strict=True)):
            if new[0] > old[0] or new[1] > old[1]:
                raised.add(s)
            if new[0] < old[0] or new[1] < old[1]:
                lowered.add(s)
        parent = child
    everything = set(range(len(budget.names)))
    assert raised == everything and lowered == everything


def test_a_policy_filled_up_fits_and_no_single_layer_can_go_higher(problem):
    budget = problem.budget
    policy = filled(budget.projected([(0, 0)] * len(budget.names)), budget, np.random.default_rng(3))
    assert budget.fits(policy)
    for s, (w, a) in enumerate(policy):
        for up in ((w + 1, a), (w, a + 1)):
            if up[0] < len(budget.weight_codes) and up[1] < len(budget.activation_codes):
                assert not budget.fits([*policy[:s], up, *policy[s + 1 :]])


def test_search_is_in_budget_counts_subset_scores_and_is_seeded(problem):
    searcher = Evolution()
    episodes, notes = run(problem, 40, seed=1)
    again, _ = run(problem, 40, seed=1)
    other, _ = run(problem, 40, seed=2)
    assert all(e.within_budget for e in episodes)
    assert [e.policy for e in episodes] == [e.policy for e in again]
    assert [e.policy for e in episodes] != [e.policy for e in other]
    # 16 first candidates through the stages cost 16/8 + 4/2 + 1 = 5 evaluations, then 5 per generation
    assert searcher.generation_cost(16) == pytest.approx(5.0)
    assert notes.subset_evaluations == pytest.approx(4.0 * len(episodes), abs=0.05)
    assert len(episodes) + notes.subset_evaluations <= 40 + 1e-9
    assert len(episodes) == 8


def test_search_improves_on_its_first_generation(problem):
    episodes, _ = run(problem, 60, seed=0, stages=[])
    first = max(e.proxy for e in episodes[:16])
    assert len(episodes) == 60 and max(e.proxy for e in episodes) >= first


def test_subset_scores_match_the_evaluator_on_every_sample(problem):
    subsets = SubsetScorer(problem)
    policy = problem.budget.projected([(2, 2)] * len(problem.searched))
    whole = subsets.score([problem.policy(policy)])[0]
    assert whole == pytest.approx(problem.evaluator.measure(problem.policy(policy)))
    half = subsets.score([problem.policy(policy)], samples=np.arange(0, subsets.samples, 2))[0]
    assert 0.0 <= half["top1"] <= 1.0


def test_select_and_split_keep_the_samples_asked_for(problem):
    calibration = problem.evaluator.calibration
    picked = select_samples(calibration, [0, 3, calibration.num_samples - 1])
    everything = calibration.targets()
    assert picked.num_samples == 3
    assert picked.targets().tolist() == everything[[0, 3, calibration.num_samples - 1]].tolist()
    search, selection = split_samples(calibration, 0.25, seed=0)
    assert search.num_samples + selection.num_samples == calibration.num_samples
    assert selection.num_samples == round(0.25 * calibration.num_samples)
    assert split_samples(calibration, 0.25, seed=0)[1].targets().tolist() == selection.targets().tolist()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"offspring": 0}, "agent.kwargs.offspring for 'evolution'"),
        ({"stages": [[0.5, 4], [0.25, 1]]}, "shares must rise"),
        ({"stages": [[1.5, 4]]}, "list of \\[share"),
        ({"offspring": 2, "stages": [[0.1, 4]]}, "raise offspring"),
        ({"bogus": 1}, "unknown key 'bogus'"),
    ],
)
def test_bad_options_are_one_line_user_errors(kwargs, message):
    with pytest.raises(UserError, match=message):
        build_searcher("evolution", kwargs)


def test_weight_only_space_mutates_weights_only(digits_workload, digits_costs, digits_evaluator):
    config = parse_config({"quantization": {"weight_bits": [2, 4, 8], "activation_bits": [8]}, "budget": 0.5})
    small = build_problem(
        config, workload=dataclasses.replace(digits_workload), costs=digits_costs, evaluator=digits_evaluator
    )
    episodes, _ = run(small, 15, seed=0)
    assert episodes and all(e.within_budget for e in episodes)
    assert {a for e in episodes for _, a in e.policy.values()} == {8}
