"""The default searcher, mbppo, and its pieces: sensitivity features, the surrogate, the budget-conditioned and
model environments, tie-breaking, and whole searches (honest counting, determinism, budgets, ablations)."""

import dataclasses
import warnings

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from mpq_rl.agents import build_searcher
from mpq_rl.agents.model_based import SurrogateReward
from mpq_rl.agents.surrogate import Surrogate
from mpq_rl.config import parse_config
from mpq_rl.envs import BitWidthEnv, LearnedRewardEnv
from mpq_rl.envs.observation import OBSERVATION_FEATURES
from mpq_rl.errors import UserError
from mpq_rl.quantization.formats import FORMATS
from mpq_rl.runs.assembly import build_problem
from mpq_rl.runs.recorder import Recorder
from mpq_rl.search.searcher import SearchContext
from mpq_rl.search.sensitivity import Sensitivity, measure_sensitivity

SMALL = {"prior_episodes": 32, "model_episodes": 32, "candidates": 16, "evaluations_per_round": 8}


@pytest.fixture
def problem(digits_workload, digits_evaluator, one_thread):
    config = parse_config({"budget": 0.35})
    return build_problem(config, workload=digits_workload, evaluator=digits_evaluator)


@pytest.fixture
def sensitivity(problem) -> Sensitivity:
    budget = problem.budget
    return measure_sensitivity(
        problem.evaluator.simulator, problem.searched, budget.weight_codes, budget.activation_codes
    )


def run(problem, tmp_path, episodes: int, seed: int = 0, **kwargs) -> tuple[list, SearchContext]:
    recorded: list = []
    context = SearchContext(problem, episodes, seed, recorded.append, tmp_path)
    build_searcher("mbppo", {**SMALL, **kwargs}).search(context)
    return recorded, context


def key(episode) -> tuple:
    return tuple(tuple(bits) for bits in episode.policy.values())


# ---- sensitivity ------------------------------------------------------------------------------------------------


def test_sensitivity_is_the_relative_quantization_error_of_weights_and_inputs(problem, sensitivity):
    simulator, budget = problem.evaluator.simulator, problem.budget
    name = problem.searched[2]
    weight = simulator.fp32_weights[name]
    for j, bits in enumerate(budget.weight_codes):
        quantized = FORMATS["int"].weight_quantizers(weight, [bits], "mse", 99.99)[0].values(weight)
        expected = float((quantized - weight).pow(2).sum() / weight.pow(2).sum())
        assert sensitivity.weight[2, j] == pytest.approx(expected, rel=1e-6)
    sample = simulator.activation_sample(name)
    for j, bits in enumerate(budget.activation_codes):
        quantizer = simulator.activation(name, bits)
        expected = float((quantizer.values(sample) - sample).pow(2).sum() / sample.pow(2).sum())
        assert sensitivity.activation[2, j] == pytest.approx(expected, rel=1e-6)
    # more bits, less error, for every layer
    assert np.all(np.diff(sensitivity.weight, axis=1) < 0)
    assert np.all(np.diff(sensitivity.activation, axis=1) < 0)


def test_sensitivity_features_are_log_errors_in_unit_range():
    s = Sensitivity(np.array([[1.0, 1e-3, 1e-9]]), np.array([[0.0, 1e-6]]))
    assert s.features().tolist() == [[1.0, 0.5, 0.0, 0.0, 0.0]]
    theory = Sensitivity.theoretical(2, (2, 8, 32), (4,))
    assert theory.weight.tolist() == [[4.0**-2, 4.0**-8, 0.0]] * 2 and theory.activation.tolist() == [[4.0**-4]] * 2


# ---- surrogate --------------------------------------------------------------------------------------------------


def test_surrogate_recovers_known_layer_importances():
    rng = np.random.default_rng(0)
    layers, n_w, n_a = 5, 4, 3
    sensitivity = Sensitivity(rng.uniform(0, 0.2, (layers, n_w)), rng.uniform(0, 0.1, (layers, n_a)))
    truth = np.array([0.5, 2.0, 0.0, 1.0, 3.0, 0.2, 0.0, 1.5, 0.7, 0.1])
    choices = np.stack([rng.integers(n_w, size=(200, layers)), rng.integers(n_a, size=(200, layers))], axis=-1)
    model = Surrogate(sensitivity, proxy_fp32=0.9, ridge=1e-6)
    proxies = 0.9 - model.features(choices) @ truth
    model.fit([list(map(tuple, c)) for c in choices], proxies)
    assert np.allclose(model.coefficients[0], truth, atol=1e-3)
    mean, std = model.predict(choices[:10])
    assert np.allclose(mean, proxies[:10], atol=1e-3) and np.all(std < 1e-3)


def test_surrogate_prior_is_total_noise_and_coefficients_stay_non_negative():
    sensitivity = Sensitivity(np.array([[0.1, 0.01]]), np.array([[0.2, 0.0]]))
    model = Surrogate(sensitivity, proxy_fp32=1.0)
    mean, std = model.predict(np.array([[[0, 0]], [[1, 1]]]))
    assert mean.tolist() == pytest.approx([1.0 - 0.3, 1.0 - 0.01]) and std.tolist() == [0.0, 0.0]
    # a proxy that *rises* with noise cannot make an importance negative
    model.fit([((0, 0),), ((1, 1),), ((0, 1),)], [1.2, 1.0, 1.1])
    assert np.all(model.coefficients >= 0)


def test_surrogate_reward_sums_to_the_scaled_predicted_loss(sensitivity, problem):
    model = Surrogate(sensitivity, problem.proxy_fp32)
    reward = SurrogateReward(model)
    choices = [(1, 2)] * len(problem.searched)
    total = sum(reward.reward(step, c) for step, c in enumerate(choices))
    lowest = [(0, 0)] * len(problem.searched)
    assert sum(reward.reward(step, c) for step, c in enumerate(lowest)) == pytest.approx(-1.0)
    predicted_loss = problem.proxy_fp32 - model.predict(np.array([choices]))[0][0]
    lowest_loss = problem.proxy_fp32 - model.predict(np.array([lowest]))[0][0]
    assert total == pytest.approx(-predicted_loss / lowest_loss)


# ---- environment ------------------------------------------------------------------------------------------------


def test_sensitivity_and_budget_observations(problem, sensitivity):
    env = BitWidthEnv(problem=problem, discrete=True, sensitivity=sensitivity, budgets=[0.3, 0.5, 0.8])
    n = len(OBSERVATION_FEATURES)
    errors = sensitivity.features()
    assert env.observation_space.shape == (n + errors.shape[1] + 1,)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=0, options={"budget": 0.5})
    assert np.allclose(obs[n:-1], errors[0]) and obs[-1] == pytest.approx(0.5)
    obs, *_ = env.step(np.array([6, 6]))
    assert np.allclose(obs[n:-1], errors[1])
    with pytest.raises(ValueError, match="not one of this environment's budgets"):
        env.reset(options={"budget": 0.4})


def test_budget_conditioned_episodes_end_within_their_own_budget(problem):
    env = BitWidthEnv(problem=problem, discrete=True, budgets=[0.25, 0.35, 0.5, 0.75])
    rng = np.random.default_rng(1)
    for fraction in env.budgets:
        for _ in range(5):
            env.reset(options={"budget": fraction})
            done = False
            while not done:
                _, _, done, _, info = env.step(rng.integers(7, size=2))
            assert info["cost_ratio"][problem.metric] <= fraction * (1 + 1e-9)
    seen = {round(float(env.reset()[0][-1]), 2) for _ in range(40)}
    assert seen == {0.25, 0.35, 0.5, 0.75}  # drawn from the list


def test_model_environment_scores_nothing_and_rewards_each_step(problem, sensitivity):
    reward = SurrogateReward(Surrogate(sensitivity, problem.proxy_fp32))
    env = LearnedRewardEnv(problem, reward, discrete=True, sensitivity=sensitivity)
    cached = len(problem.evaluator.cache)
    env.reset(seed=0)
    rewards, info, done = [], {}, False
    while not done:
        _, r, done, _, info = env.step(np.array([3, 3]))
        rewards.append(r)
    assert len(problem.evaluator.cache) == cached
    assert set(info) == {"choices", "budget", "projected_layers"} and len(info["choices"]) == env.n_steps
    assert rewards == pytest.approx([reward.reward(step, c) for step, c in enumerate(info["choices"])])


# ---- tie-breaking -----------------------------------------------------------------------------------------------


def test_equal_reward_goes_to_the_cheaper_policy(problem, tmp_path):
    recorder = Recorder(tmp_path, problem)
    expensive = problem.score([(6, 6)] * 2 + [(2, 2)] * (len(problem.searched) - 2))
    cheap = problem.score([(2, 2)] * len(problem.searched))
    for episode, cost in ((expensive, 0.34), (cheap, 0.30), (expensive, 0.32)):
        ratios = {**episode.cost_ratio, problem.metric: cost}
        recorder(dataclasses.replace(episode, reward=-0.1, within_budget=True, cost_ratio=ratios))
    recorder.close()
    assert recorder.best_number == 2 and recorder.best.cost_ratio[problem.metric] == 0.30


# ---- the searcher -----------------------------------------------------------------------------------------------


def test_every_proposal_is_a_new_in_budget_evaluation_and_runs_repeat(problem, tmp_path):
    problem.evaluator.cache.entries.clear()
    episodes, context = run(problem, tmp_path, episodes=40)
    assert len(episodes) == 40 and len({key(e) for e in episodes}) == 40
    # first the probes: one layer at its cheapest bits, every other at 8/8 (none for a layer whose cost does not
    # fall with bits); then only in-budget proposals
    lowered = [[n for n, bits in e.policy.items() if bits != (8, 8)] for e in episodes]
    probes = 0
    while len(lowered[probes]) == 1:
        probes += 1
    assert [names[0] for names in lowered[:probes]] == [n for n in problem.searched if n in sum(lowered[:probes], [])]
    assert len(problem.searched) - 2 <= probes <= len(problem.searched)
    assert all(e.within_budget for e in episodes[probes:])
    assert context.report.sensitivity_seconds >= 0 and context.report.budgets == [0.35]
    again, _ = run(problem, tmp_path, episodes=40)
    assert [key(e) for e in again] == [key(e) for e in episodes]


def test_beats_random_search_at_equal_evaluations(problem, tmp_path):
    mbppo, _ = run(problem, tmp_path, episodes=60, seed=3)
    recorded: list = []
    build_searcher("random").search(SearchContext(problem, 60, 3, recorded.append, tmp_path))
    best = max(e.proxy for e in mbppo if e.within_budget)
    assert best >= max(e.proxy for e in recorded if e.within_budget)
    assert best >= problem.proxy_fp32 - 0.01


def test_budget_conditioned_search_finds_a_policy_for_every_budget(problem, tmp_path):
    episodes, context = run(problem, tmp_path, episodes=48, budgets=[0.25, 0.5])
    assert context.report.budgets == [0.25, 0.35, 0.5]
    ratios = [e.cost_ratio[problem.metric] for e in episodes]
    for fraction in (0.25, 0.35, 0.5):
        assert sum(r <= fraction * (1 + 1e-9) for r in ratios) >= 10
    assert max(ratios) > 0.35  # proposals for the larger budget use it


@pytest.mark.parametrize("switch", ["sensitivity", "surrogate", "prior", "solver", "neighbours"])
def test_ablations_run_and_count_every_evaluation(problem, tmp_path, switch):
    off = {"neighbours": 0, "solver": "none"}.get(switch, False)
    episodes, _ = run(problem, tmp_path, episodes=20, probes=False, **{switch: off})
    assert len(episodes) == 20 and all(e.within_budget for e in episodes)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"rounds": 3}, "unknown key 'rounds'"),
        ({"budgets": [0.3, -1]}, r"agent.kwargs.budgets.1 for 'mbppo': Input should be greater than 0, got -1"),
        ({"candidates": 0}, r"agent.kwargs.candidates for 'mbppo': Input should be greater than or equal to 1, got 0"),
        ({"prior": "yes"}, r"agent.kwargs.prior for 'mbppo': Input should be a valid boolean, got 'yes'"),
        ({"candidates": 2.5}, r"agent.kwargs.candidates for 'mbppo': Input should be a valid integer, got 2.5"),
    ],
)
def test_bad_options_are_user_errors(kwargs, message):
    with pytest.raises(UserError, match=message):
        build_searcher("mbppo", kwargs)


def test_infeasible_extra_budget_is_a_user_error(problem, tmp_path):
    with pytest.raises(UserError, match="cannot be met"):
        run(problem, tmp_path, episodes=5, budgets=[0.01])
