"""The surrogate searcher (mbppo without the agent): its solvers against the brute-force optimum of its own model,
honest counting, determinism, and its options."""

import dataclasses
import itertools

import numpy as np
import pytest

from mpq_rl.agents import build_searcher
from mpq_rl.agents.surrogate_search import SurrogateSearch, probes, solver_optima
from mpq_rl.config import parse_config
from mpq_rl.errors import UserError
from mpq_rl.runs.assembly import build_problem
from mpq_rl.search.searcher import SearchContext

SEARCHED = ("block.conv2", "dw", "pw", "fc")


@pytest.fixture(scope="module")
def problem(digits_workload, digits_costs, digits_evaluator, one_thread):
    """Four searched layers, weights at 2/4/8 bits and activations at 4/8: 6^4 = 1296 policies."""
    config = parse_config({"quantization": {"weight_bits": [2, 4, 8], "activation_bits": [4, 8]}, "budget": 0.8})
    workload = dataclasses.replace(
        digits_workload,
        searched=SEARCHED,
        fixed={name: (8, 8) for name in digits_workload.layers.names if name not in SEARCHED},
    )
    return build_problem(config, workload=workload, costs=digits_costs, evaluator=digits_evaluator)


def run(problem, episodes, seed=0, **kwargs):
    recorded = []
    context = SearchContext(problem=problem, episodes=episodes, seed=seed, record=recorded.append, output=None)
    searcher = build_searcher("surrogate", kwargs)
    searcher.search(context)
    return recorded, searcher


def brute_force(problem, surrogate):
    """Every in-budget policy and the surrogate's predicted proxy of each."""
    budget = problem.budget
    pairs = [(w, a) for w in range(3) for a in range(2)]
    fitting = [p for p in itertools.product(pairs, repeat=len(SEARCHED)) if budget.fits(p)]
    mean, _ = surrogate.predict(np.array(fitting))
    return fitting, mean


def test_exact_solver_finds_the_brute_force_optimum_of_its_own_model(problem):
    _, searcher = run(problem, 20, solver="exact")
    surrogate = searcher.surrogate
    assert surrogate.samples == 20
    fitting, mean = brute_force(problem, surrogate)
    exact = solver_optima(problem.budget, surrogate, "exact")
    assert problem.budget.fits(exact[0])
    predicted, _ = surrogate.predict(np.array([exact[0]]))
    assert predicted[0] == pytest.approx(mean.max(), abs=1e-9)
    # the relaxation's optimum fits and can be no better than the exact one
    relaxed = solver_optima(problem.budget, surrogate, "relaxation")[0]
    assert problem.budget.fits(relaxed)
    assert surrogate.predict(np.array([relaxed]))[0][0] <= mean.max() + 1e-9


def test_search_finds_the_true_optimum_region_and_beats_random(problem):
    episodes, _ = run(problem, 40)
    truth = [problem.score(list(p)).proxy for p in brute_force(problem, run(problem, 1)[1].surrogate)[0]]
    found = max(e.proxy for e in episodes if e.within_budget)
    random = sorted(e.proxy for e in build_and_run_random(problem, 40))
    assert found >= max(truth) - 0.01
    assert found >= random[len(random) // 2]


def build_and_run_random(problem, episodes):
    recorded = []
    context = SearchContext(problem=problem, episodes=episodes, seed=3, record=recorded.append, output=None)
    build_searcher("random").search(context)
    return recorded


def test_every_evaluation_is_new_in_budget_counted_and_seeded(problem):
    first, _ = run(problem, 25, seed=4)
    again, _ = run(problem, 25, seed=4)
    policies = [tuple(sorted(e.policy.items())) for e in first]
    assert len(first) == 25 and len(set(policies)) == 25
    # the sensitivity probes (one layer lowered, the others at the top) may exceed the budget; nothing after them
    assert all(e.within_budget for e in first[len(probes(problem.budget)) :])
    assert policies == [tuple(sorted(e.policy.items())) for e in again]


def test_surrogate_is_mbppo_without_the_agent():
    from mpq_rl.agents.model_based import ModelBasedPPO

    assert issubclass(ModelBasedPPO, SurrogateSearch)
    assert SurrogateSearch().proposals(None) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"solver": "simplex"}, "agent.kwargs.solver for 'surrogate'"),
        ({"neighbours": -1}, "agent.kwargs.neighbours for 'surrogate'"),
        ({"candidates": 4}, "unknown key 'candidates'"),
    ],
)
def test_bad_options_are_user_errors(kwargs, message):
    with pytest.raises(UserError, match=message):
        build_searcher("surrogate", kwargs)


# ---- the interacting surrogate (a model whose optimum is not a knapsack) --------------------------------------


def test_interacting_surrogate_recovers_known_pair_terms():
    from mpq_rl.agents.surrogate import Surrogate
    from mpq_rl.search.sensitivity import Sensitivity

    rng = np.random.default_rng(0)
    layers, n_w, n_a = 5, 4, 3
    sensitivity = Sensitivity(rng.uniform(0, 0.5, (layers, n_w)), rng.uniform(0, 0.5, (layers, n_a)))
    truth = np.array([0.5, 2.0, 0.0, 1.0, 3.0, 0.2, 0.0, 1.5, 0.7, 0.1, 4.0, 0.0, 2.0, 1.0])
    choices = np.stack([rng.integers(n_w, size=(400, layers)), rng.integers(n_a, size=(400, layers))], axis=-1)
    model = Surrogate(sensitivity, proxy_fp32=0.9, ridge=1e-6, interactions="adjacent")
    proxies = 0.9 - model.features(choices) @ truth
    model.fit([list(map(tuple, c)) for c in choices], proxies)
    assert np.allclose(model.coefficients[0], truth, atol=1e-2)  # the ridge pulls by ~1e-3
    assert np.allclose(model.pair_coefficients(), truth[10:], atol=1e-2)


def test_episode_rewards_of_an_interacting_surrogate_sum_to_its_scaled_prediction():
    from mpq_rl.agents.model_based import SurrogateReward
    from mpq_rl.agents.surrogate import Surrogate
    from mpq_rl.search.sensitivity import Sensitivity

    rng = np.random.default_rng(1)
    sensitivity = Sensitivity(rng.uniform(0, 0.3, (4, 3)), rng.uniform(0, 0.3, (4, 2)))
    model = Surrogate(sensitivity, proxy_fp32=1.0, interactions="adjacent")
    model.coefficients[:, 8:] = [[2.0, 0.5, 1.0]]
    shared = SurrogateReward(model)
    first, second = shared.episode(), shared.episode()
    policy = [(2, 1), (0, 0), (1, 1), (0, 1)]
    other = [(0, 0), (2, 1), (1, 0), (2, 0)]
    # two environments stepping in lockstep keep their own previous choices
    totals = [0.0, 0.0]
    for step in range(4):
        totals[0] += first.reward(step, policy[step])
        totals[1] += second.reward(step, other[step])
    weight, activation = model.layer_losses()
    worst = float(weight.max(axis=1).sum() + activation.max(axis=1).sum())
    for total, choices in zip(totals, (policy, other), strict=True):
        loss = 1.0 - model.predict(np.array([choices]))[0][0]
        assert total == pytest.approx(-loss / worst)
    additive = SurrogateReward(Surrogate(sensitivity, 1.0))
    assert additive.episode() is additive  # an additive surrogate's reward needs no memory


def test_mbppo_and_surrogate_search_an_interacting_model(problem):
    episodes, searcher = run(problem, 12, interactions="adjacent")
    skip = len(probes(problem.budget))
    assert len(episodes) == 12 and all(e.within_budget for e in episodes[skip:])
    assert searcher.surrogate.pair_coefficients().shape == (len(SEARCHED) - 1,)
    recorded = []
    context = SearchContext(problem=problem, episodes=12, seed=0, record=recorded.append, output=None)
    kwargs = {"interactions": "adjacent", "prior_episodes": 16, "model_episodes": 8, "candidates": 4, "n_envs": 2}
    build_searcher("mbppo", kwargs).search(context)
    assert len(recorded) == 12 and all(e.within_budget for e in recorded[skip:])
