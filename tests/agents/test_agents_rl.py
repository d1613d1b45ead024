"""The RL searchers: HAQ's DDPG defaults, the exploration schedule, and every SB3 algorithm on the real environment."""

import numpy as np
import pytest
import torch
from scipy.stats import truncnorm
from stable_baselines3 import A2C, DDPG, PPO, SAC, TD3
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.vec_env import DummyVecEnv

from mpq_rl.agents import SEARCHERS, build_searcher
from mpq_rl.agents.checkpoint import CHECKPOINT_DIR, load_checkpoint, read_checkpoint
from mpq_rl.agents.rl import RLSearcher, TruncatedNormalNoise
from mpq_rl.config import parse_config
from mpq_rl.envs import BitWidthEnv
from mpq_rl.errors import UserError
from mpq_rl.runs.assembly import build_problem
from mpq_rl.search.searcher import SearchContext

SMALL_OFF_POLICY = {"warmup_episodes": 2, "buffer_size": 200, "batch_size": 16}
SMALL = {
    "ddpg": SMALL_OFF_POLICY,
    "td3": SMALL_OFF_POLICY,
    "sac": SMALL_OFF_POLICY,
    "ppo": {"n_steps": 18, "batch_size": 9, "n_epochs": 2},
    "a2c": {},
}


@pytest.fixture
def problem(digits_workload, digits_evaluator):
    config = parse_config({"hardware": {"preset": "bops", "metric": "bops"}, "budget": 0.3})
    return build_problem(config, workload=digits_workload, evaluator=digits_evaluator)


def make_context(problem, tmp_path, episodes: int, seed: int = 0) -> tuple[SearchContext, list]:
    recorded: list = []
    context = SearchContext(problem=problem, episodes=episodes, seed=seed, record=recorded.append, output=tmp_path)
    return context, recorded


def test_ddpg_defaults_are_haqs(problem, tmp_path):
    searcher = RLSearcher("ddpg")
    env = DummyVecEnv([lambda: BitWidthEnv(problem=problem)])
    context, _ = make_context(problem, tmp_path, episodes=1)
    steps = len(problem.searched)
    model = searcher._build(env, context, steps)
    assert isinstance(model, DDPG)
    assert model.gamma == 1.0 and model.tau == 0.01 and model.batch_size == 64
    assert model.learning_starts == 20 * steps
    assert model.buffer_size == 128 * steps
    assert model.train_freq.frequency == steps and model.gradient_steps == -1

    def widths(net) -> list[int]:
        return [m.out_features for m in net if hasattr(m, "out_features")][:-1]

    assert widths(model.actor.mu) == [300, 300]
    assert widths(model.critic.qf0) == [300, 300]
    model.set_logger(Logger(folder=None, output_formats=[]))
    model._update_learning_rate([model.actor.optimizer, model.critic.optimizer])
    assert model.actor.optimizer.param_groups[0]["lr"] == 1e-4
    assert model.critic.optimizer.param_groups[0]["lr"] == 1e-3
    noise = model.exploration
    assert (noise.initial_sigma, noise.decay, noise.warmup) == (0.5, 0.99, 20)


def test_exploration_schedule_and_truncation():
    noise = TruncatedNormalNoise((2,), seed=3)
    assert [noise.sigma_at(e) for e in (0, 10, 20)] == [0.5, 0.5, 0.5]
    assert noise.sigma_at(21) == pytest.approx(0.495)
    assert noise.sigma_at(120) == pytest.approx(0.5 * 0.99**100)
    noise.episode = 70
    assert noise.scale == pytest.approx(2 * 0.5 * 0.99**50)  # relative to the width of [-1, 1]
    draws = np.stack([noise.around(np.array([0.9, -1.0])) for _ in range(2000)])
    assert draws.min() >= -1.0 and draws.max() <= 1.0
    for column, center in enumerate((0.9, -1.0)):  # sample means match the truncated normal's (HAQ uses scipy's)
        a, b = (-1.0 - center) / noise.scale, (1.0 - center) / noise.scale
        expected = truncnorm.mean(a, b, loc=center, scale=noise.scale)
        assert draws[:, column].mean() == pytest.approx(expected, abs=0.03)
    again = TruncatedNormalNoise((2,), seed=3)
    again.episode = 70
    assert np.array_equal(again.around(np.array([0.9, -1.0])), draws[0])


@pytest.mark.parametrize(
    ("name", "cls", "discrete"),
    [("ddpg", DDPG, False), ("td3", TD3, False), ("sac", SAC, False), ("ppo", PPO, True), ("a2c", A2C, True)],
)
def test_every_algorithm_searches(problem, tmp_path, name, cls, discrete):
    searcher = build_searcher(name, {**SMALL[name], "checkpoint_every": 3})
    context, recorded = make_context(problem, tmp_path, episodes=5)
    searcher.search(context)
    assert isinstance(searcher.model, cls)
    assert len(recorded) == 5 and context.done
    assert all(e.within_budget and set(e.policy) == set(problem.workload.layers.names) for e in recorded)
    assert (searcher.model.action_space.__class__.__name__ == "MultiDiscrete") == discrete
    assert searcher.resume_point(tmp_path) == 5
    if name == "ddpg":
        assert searcher.model.exploration.episode == 5

    # The checkpoint (no pickle) loads into a freshly built algorithm: same weights, optimizer moments, counters,
    # replay buffer and exploration state.
    saved = searcher.model
    folder = tmp_path / CHECKPOINT_DIR
    assert sorted(p.suffix for p in folder.iterdir()) == sorted(
        [".json", ".safetensors"] + ([".npz"] if name in ("ddpg", "td3", "sac") else [])
    )
    env = DummyVecEnv([lambda: BitWidthEnv(problem=problem, discrete=discrete)])
    fresh = build_searcher(name, SMALL[name])._build(env, make_context(problem, tmp_path, 5)[0], len(problem.searched))
    load_checkpoint(fresh, read_checkpoint(folder))
    loaded = fresh.get_parameters()
    for key, value in saved.get_parameters().items():
        # SB3 sets the optimizers' learning rates before every update: only their state is checkpointed.
        part = "state" if "param_groups" in value else None
        assert_same(loaded[key][part] if part else loaded[key], value[part] if part else value)
    assert (fresh.num_timesteps, fresh._n_updates) == (saved.num_timesteps, saved._n_updates) != (0, 0)
    if name in ("ddpg", "td3", "sac"):
        for array in ("observations", "actions", "rewards", "dones", "next_observations"):
            assert np.array_equal(getattr(fresh.replay_buffer, array), getattr(saved.replay_buffer, array))
        assert (fresh.replay_buffer.pos, fresh.replay_buffer.full) == (saved.replay_buffer.pos, False)
    if name == "sac":
        assert fresh.log_ent_coef.item() == saved.log_ent_coef.item()
    if name == "ddpg":
        assert fresh.exploration.episode == 5
        assert np.array_equal(fresh.exploration.around(np.zeros(1)), saved.exploration.around(np.zeros(1)))


def assert_same(a, b) -> None:
    """Nested state dicts (tensors, numbers, lists) are equal."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    else:
        assert a == b


def test_bad_kwargs_and_names_are_user_errors():
    with pytest.raises(UserError, match="unknown key 'learning_rat'"):
        build_searcher("ddpg", {"learning_rat": 0.1})
    with pytest.raises(UserError, match="unknown agent 'dqn'"):
        build_searcher("dqn")
    with pytest.raises(UserError, match="agent.kwargs.n_steps for 'ppo': Input should be a valid integer, got 'x'"):
        build_searcher("ppo", {"n_steps": "x"})
    with pytest.raises(UserError, match="agent.kwargs.checkpoint_every for 'td3': .*greater than or equal to 1"):
        build_searcher("td3", {"checkpoint_every": 0})
    with pytest.raises(UserError, match="'sac' has unknown key 'noise_sigma'"):
        build_searcher("sac", {"noise_sigma": 0.1})  # HAQ's exploration is DDPG's and TD3's only
    assert {"ddpg", "td3", "sac", "ppo", "a2c"} <= set(SEARCHERS)


def test_typed_kwargs_override_the_defaults_and_only_those_given():
    settings = build_searcher("ddpg", {"batch_size": 16, "train_freq": [8, "step"]}).settings(5)
    assert settings["batch_size"] == 16 and settings["train_freq"] == (8, "step")  # a YAML list becomes SB3's tuple
    assert settings["buffer_size"] == 128 * 5  # the default
    assert "learning_starts" not in settings and "checkpoint_every" not in settings
