"""The bit-width environment: spaces, checkers, budget enforcement, rewards and the final info."""

import re
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import mpq_rl.envs  # noqa: F401  (registers mpq_rl/BitWidth-v1)
from mpq_rl.config import parse_config
from mpq_rl.envs import ENV_ID, BitWidthEnv
from mpq_rl.envs.observation import OBSERVATION_FEATURES
from mpq_rl.errors import UserError
from mpq_rl.runs.assembly import build_problem
from mpq_rl.search.rewards import Outcome, haq


@pytest.fixture
def make_env(digits_workload, digits_costs, digits_evaluator):
    """An environment over the shared digits workload, with config sections overridden."""

    def make(discrete: bool = False, **sections) -> BitWidthEnv:
        config = parse_config(sections)
        problem = build_problem(config, workload=digits_workload, costs=digits_costs, evaluator=digits_evaluator)
        return BitWidthEnv(problem, discrete=discrete)

    return make


def negative_cost(outcome, weight: float = 1.0) -> float:
    """A user-defined reward, imported by name in ``test_rewards``."""
    return -weight * outcome.cost_ratio


def run_episode(env: BitWidthEnv, actions) -> tuple[list[np.ndarray], float, dict]:
    obs, _ = env.reset(seed=0)
    observations, done, reward, info = [obs], False, 0.0, {}
    for action in actions:
        obs, reward, done, truncated, info = env.step(action)
        observations.append(obs)
        assert not truncated
        if done:
            break
    assert done
    return observations, reward, info


def random_actions(env: BitWidthEnv, seed: int):
    env.action_space.seed(seed)
    return [env.action_space.sample() for _ in range(env.n_steps)]


def test_passes_gymnasium_and_sb3_checkers_without_warnings(make_env):
    for discrete in (False, True):
        env = make_env(discrete=discrete)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            check_env(env, skip_render_check=True)
            sb3_check_env(env)


def test_docstring_observation_table_matches_the_space(make_env):
    env = make_env()
    rows = re.findall(r"^\s*\| (\d+) \| (\w+) \| (.+?) \| ([\d.]+) \| ([\d.]+) \|$", BitWidthEnv.__doc__, re.M)
    assert [int(r[0]) for r in rows] == list(range(env.observation_space.shape[0]))
    assert [(r[1], r[2]) for r in rows] == [(f[0], f[1]) for f in OBSERVATION_FEATURES]
    assert np.allclose([float(r[3]) for r in rows], env.observation_space.low)
    assert np.allclose([float(r[4]) for r in rows], env.observation_space.high)
    assert f"shape ``({len(rows)},)``" in BitWidthEnv.__doc__


def test_action_spaces(make_env):
    assert make_env().action_space == gym.spaces.Box(-1, 1, (2,), np.float32)
    assert make_env(discrete=True).action_space == gym.spaces.MultiDiscrete([7, 7])
    weight_only = make_env(quantization={"activation_bits": []}, hardware={"metric": "size"})
    assert weight_only.action_space.shape == (1,)
    _, _, info = run_episode(weight_only, [np.array([-1.0], np.float32)] * weight_only.n_steps)
    assert all(a == 32 for _, a in info["policy"].values())
    assert all(w == 2 for w, _ in info["policy"].values())


@pytest.mark.parametrize("budget", [0.25, 0.35, 0.5])
def test_projection_keeps_every_episode_in_budget_and_observes_the_bits_used(make_env, digits_costs, budget):
    env = make_env(budget=budget)
    for seed in range(15):
        observations, _, info = run_episode(env, random_actions(env, seed))
        assert info["within_budget"]
        assert info["cost_ratio"]["latency"] <= budget * (1 + 1e-9)
        assert info["cost_ratio"] == digits_costs.ratios({n: tuple(b) for n, b in info["policy"].items()})
        # observation t+1 reports the bits actually used at layer t (after projection)
        for step, name in enumerate(env.workload.searched):
            w, a = info["policy"][name]
            assert observations[step + 1][11] == pytest.approx(env.budget.weight_codes.index(w) / 6)
            assert observations[step + 1][12] == pytest.approx(env.budget.activation_codes.index(a) / 6)


def test_highest_bits_are_projected_and_lowest_are_left_alone(make_env):
    env = make_env(budget=0.35)
    _, _, info = run_episode(env, [np.ones(2, np.float32)] * env.n_steps)
    assert info["projected"] and info["projected_layers"] > 0 and info["within_budget"]
    # the budget is used almost entirely: projection keeps the highest bits that fit
    assert info["cost_ratio"]["latency"] > 0.3
    _, _, low = run_episode(env, [-np.ones(2, np.float32)] * env.n_steps)
    assert not low["projected"] and set(map(tuple, low["policy"].values())) == {(2, 2)}


def test_wall_lowers_from_the_last_layer_and_penalty_leaves_the_policy(make_env):
    wall = make_env(budget={"fraction": 0.5, "enforcement": "wall"})
    _, _, info = run_episode(wall, [np.ones(2, np.float32)] * wall.n_steps)
    assert info["within_budget"] and info["projected"]
    bits = [sum(b) for b in info["policy"].values()]
    assert bits[-1] <= bits[0]
    penalty = make_env(budget={"fraction": 0.5, "enforcement": "penalty"})
    _, reward, info = run_episode(penalty, [np.ones(2, np.float32)] * penalty.n_steps)
    assert not info["within_budget"] and not info["projected"]
    assert info["cost_ratio"]["latency"] == pytest.approx(1.0)
    unpenalized = haq(Outcome(info["proxy"], info["proxy_fp32"], 1.0, 0.5))  # W8A8 may differ from FP32 a little
    assert reward == pytest.approx(info["reward"]) == pytest.approx(unpenalized - 10.0 * (1.0 / 0.5 - 1.0), abs=1e-6)


def test_infeasible_budget_names_the_minimum_fraction(make_env):
    with pytest.raises(UserError, match=r"cannot be met: the lowest bits reach 0\.19\d\d at best"):
        make_env(budget=0.1)


def test_rewards(make_env):
    actions = [np.zeros(2, np.float32)] * 9
    _, haq, info = run_episode(make_env(reward={"name": "haq"}), actions)
    assert haq == pytest.approx(10.0 * (info["proxy"] - info["proxy_fp32"]))
    _, mnas, info = run_episode(make_env(reward={"name": "mnasnet", "kwargs": {"beta": -0.5}}), actions)
    assert mnas == pytest.approx(info["proxy"] * (info["cost_ratio"]["latency"] / 0.5) ** -0.5)
    _, releq, info = run_episode(make_env(reward={"name": "releq"}), actions)
    y, x = info["proxy"] / info["proxy_fp32"], info["cost_ratio"]["latency"]
    assert releq == pytest.approx(2 * ((1 - x**0.8) * y ** (1 / y) - 0.5))
    custom_env = make_env(reward={"name": "test_env:negative_cost", "kwargs": {"weight": 3.0}})
    _, custom, info = run_episode(custom_env, actions)
    assert custom == pytest.approx(-3.0 * info["cost_ratio"]["latency"])
    with pytest.raises(UserError, match="unknown reward.name"):
        make_env(reward={"name": "accuracy"})
    with pytest.raises(UserError, match="reward.kwargs do not fit"):
        make_env(reward={"name": "haq", "kwargs": {"gamma": 1}})


def test_reward_is_zero_before_the_last_step(make_env):
    env = make_env()
    env.reset(seed=0)
    for _ in range(env.n_steps - 1):
        _, reward, done, _, info = env.step(env.action_space.sample())
        assert (reward, done, info) == (0.0, False, {})


def test_pinned_layers_keep_their_bits(digits_workload, digits_splits, digits_costs, digits_evaluator):
    from mpq_rl.runs.assembly import assemble_workload

    config = parse_config({"quantization": {"pin": {"first": [8, 8], "classifier": [6, 6]}}})
    workload = assemble_workload(config, digits_workload.model, digits_splits)
    assert workload.searched[0] != "stem" and "classifier" not in workload.searched
    assert workload.fixed == {"stem": (8, 8), "classifier": (6, 6)}
    env = BitWidthEnv(build_problem(config, workload=workload, costs=digits_costs, evaluator=digits_evaluator))
    assert env.n_steps == 7
    _, _, info = run_episode(env, [-np.ones(2, np.float32)] * env.n_steps)
    assert info["policy"]["stem"] == [8, 8] and info["policy"]["classifier"] == [6, 6]


def test_registered_made_from_a_yaml_path_and_closing_its_problem(tmp_path, digits_model):
    path = tmp_path / "run.yaml"
    path.write_text("budget: 0.4\nhardware: {preset: bops, metric: bops}\n")
    env = gym.make(ENV_ID, config=str(path))
    assert ENV_ID == "mpq_rl/BitWidth-v1" and "mpq_rl/BitWidth-v0" not in gym.registry
    try:
        assert env.unwrapped.budget.fraction == 0.4 and env.unwrapped.problem.metric == "bops"
        _, _, info = run_episode(env.unwrapped, [np.ones(2, np.float32)] * env.unwrapped.n_steps)
        assert info["cost_ratio"]["bops"] <= 0.4 * (1 + 1e-9)
    finally:
        env.close()
    # the factory built the problem, so closing the environment gave its model back without simulator hooks
    assert not any(module._forward_pre_hooks for module in env.unwrapped.workload.model.modules())


@pytest.mark.parametrize(
    ("discrete", "action", "message"),
    [
        (True, np.array([-1, 0]), "is not a candidate index"),
        (True, np.array([0, 99]), "is not a candidate index"),
        (True, np.array([1.5, 0.0]), "is not a candidate index"),
        (True, np.array([0, 0, 0]), "has shape (3,)"),
        (True, np.array([[0, 0]]), "has shape (1, 2)"),
        (True, [float("nan"), 0], "is not finite"),
        (True, None, "is not an array of numbers"),
        (True, "0 0", "is not an array of numbers"),
        (True, [None, 0], "is not an array of numbers"),
        (False, np.array([np.nan, 0.0], dtype=np.float32), "is not finite"),
        (False, np.array([0.5]), "has shape (1,)"),
        (False, ["a", "b"], "is not an array of numbers"),
    ],
)
def test_an_action_outside_the_space_is_a_value_error_naming_it(make_env, discrete, action, message):
    env = make_env(discrete=discrete)
    env.reset(seed=0)
    space = re.escape(str(env.action_space))
    with pytest.raises(ValueError, match=re.escape(message) + f".*the action space {space} takes"):
        env.step(action)
    assert env.step(env.action_space.sample())[0] in env.observation_space


def test_step_needs_reset_and_a_closed_environment_refuses_to_step(make_env):
    env = make_env(discrete=True)
    with pytest.raises(RuntimeError, match=r"step\(\) called before reset\(\)"):
        env.step(np.array([0, 0]))
    env.reset(seed=0)
    env.close()
    with pytest.raises(RuntimeError, match=r"step\(\) called on a closed environment"):
        env.step(np.array([0, 0]))
    with pytest.raises(RuntimeError, match=r"reset\(\) called on a closed environment"):
        env.reset(seed=0)


def test_closing_an_environment_leaves_the_problem_it_was_given_scoring_the_same(small_digits_config):
    """An environment plays a problem it was given; closing it must not detach that problem's simulator (its
    activation quantization would silently go off and the same policy would score higher)."""
    problem = build_problem(small_digits_config)  # owns its evaluator, as a run's shared problem does
    try:
        lowest = [(0, 0)] * len(problem.searched)
        before = problem.evaluator.measure(problem.policy(lowest))
        BitWidthEnv(problem=problem).close()
        assert problem.evaluator.measure(problem.policy(lowest)) == before
    finally:
        problem.close()
