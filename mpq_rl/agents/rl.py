"""Reinforcement-learning searchers: stable-baselines3 DDPG (HAQ's settings, the default), TD3, SAC, PPO and A2C.

Each episode of :class:`~mpq_rl.envs.BitWidthEnv` walks the searched layers and ends with one scored policy; a
callback hands every finished episode to the run's recorder and stops training once ``agent.episodes`` are
recorded. ``agent.n_envs > 1`` steps that many environments together, and the policies they complete in one step
are evaluated in parallel by the search's evaluation pool (:mod:`mpq_rl.search.pool`).

Defaults (every one can be overridden from ``agent.kwargs``; names are stable-baselines3's, plus the few below):

* DDPG follows HAQ (Wang et al., CVPR 2019; mit-han-lab/haq ``rl_quantize.py`` and ``lib/rl/ddpg.py``): actor and
  critic 300-300, actor lr 1e-4 and critic lr 1e-3, tau 0.01, discount 1.0, batch 64, 20 warm-up episodes of
  uniform random actions, replay buffer 128 x steps per episode, one gradient step per transition after warm-up,
  and exploration by a normal around the actor's action truncated to the action bounds with
  sigma = 0.5 x 0.99^(episode - 20) of the action range.
* TD3 and SAC take the same off-policy settings (TD3 also the same exploration); SAC its own entropy-driven one.
* PPO and A2C use the ``MultiDiscrete`` action space (``discrete: false`` switches to the Box): a categorical per
  bit-width lands exactly on a candidate, while a Gaussian on the Box wastes probability mass beyond the clipped
  bounds and its log-probabilities ignore the rounding to candidates. Discount 1.0 (the reward comes once, at the
  end of the episode); PPO updates every 8 episodes per environment, A2C after every episode.

Extra keys: ``warmup_episodes`` (20, DDPG/TD3/SAC), ``noise_sigma`` (0.5), ``noise_decay`` (0.99),
``critic_learning_rate`` (1e-3, DDPG/TD3), ``discrete`` (PPO/A2C), ``checkpoint_every`` (episodes between
checkpoints, 50; written without pickle, see :mod:`mpq_rl.agents.checkpoint`). The keys each algorithm takes are
typed in its options (:data:`OPTIONS`); an unknown key or a value of the wrong type is a user error naming it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, Strict
from stable_baselines3 import A2C, DDPG, PPO, SAC, TD3
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.noise import ActionNoise
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv

from mpq_rl.agents.checkpoint import CHECKPOINT_DIR, load_checkpoint, read_checkpoint, save_checkpoint
from mpq_rl.agents.sb3 import DEFAULT_CHECKPOINT_EVERY, PooledVecEnv, RecordEpisodes, agent_logger
from mpq_rl.envs import BitWidthEnv
from mpq_rl.errors import UserError
from mpq_rl.search.searcher import SearchContext, Searcher, SearcherOptions, parse_options
from mpq_rl.search.threads import one_thread

HAQ_NET_ARCH = [300, 300]
HAQ_ACTOR_LR = 1e-4
HAQ_CRITIC_LR = 1e-3
HAQ_TAU = 0.01
HAQ_GAMMA = 1.0
HAQ_BATCH_SIZE = 64
HAQ_WARMUP_EPISODES = 20
HAQ_NOISE_SIGMA = 0.5
HAQ_NOISE_DECAY = 0.99
HAQ_BUFFER_EPISODES = 128
PPO_EPISODES_PER_UPDATE = 8


class TruncatedNormalNoise(ActionNoise):
    """HAQ's exploration: a normal around the actor's action, truncated to the action bounds.

    ``sigma`` is relative to the width of the action range, as in HAQ, whose actions span [0, 1]: on SB3's
    [-1, 1] box the standard deviation is ``2 * sigma``. It decays once per episode after the warm-up:
    ``sigma(episode) = initial_sigma * decay ** max(episode - warmup, 0)``; whoever runs the episodes sets
    :attr:`episode`. Used as a plain SB3 ``ActionNoise`` (``noise()``) it gives the untruncated additive draw.
    """

    def __init__(
        self,
        shape: tuple[int, ...],
        initial_sigma: float = HAQ_NOISE_SIGMA,
        decay: float = HAQ_NOISE_DECAY,
        warmup: int = HAQ_WARMUP_EPISODES,
        low: float = -1.0,
        high: float = 1.0,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self.shape = tuple(shape)
        self.initial_sigma, self.decay, self.warmup = initial_sigma, decay, warmup
        self.low, self.high = low, high
        self.episode = 0
        self.rng = np.random.default_rng(seed)

    def sigma_at(self, episode: int) -> float:
        """The relative sigma of ``episode`` (0-based)."""
        return self.initial_sigma * self.decay ** max(episode - self.warmup, 0)

    @property
    def scale(self) -> float:
        """The standard deviation of the current episode, in action units."""
        return self.sigma_at(self.episode) * (self.high - self.low)

    def around(self, action: np.ndarray) -> np.ndarray:
        """One draw per entry of ``action`` from the normal centered on it, truncated to [low, high]."""
        action = np.clip(np.asarray(action, dtype=np.float64), self.low, self.high)
        scale = self.scale
        if scale <= 0.0:
            return action.astype(np.float32)
        sample = self.rng.normal(action, scale)
        outside = (sample < self.low) | (sample > self.high)
        # Rejection sampling: at least half the mass lies inside for any center in the bounds.
        while outside.any():
            sample[outside] = self.rng.normal(action[outside], scale)
            outside = (sample < self.low) | (sample > self.high)
        return sample.astype(np.float32)

    def __call__(self) -> np.ndarray:
        return self.rng.normal(0.0, self.scale, self.shape).astype(np.float32)

    def __repr__(self) -> str:
        return f"TruncatedNormalNoise(sigma={self.sigma_at(self.episode):.4g}, episode={self.episode})"


class _HaqActorCritic:
    """DDPG/TD3 with HAQ's exploration (truncated normal around the action) and a critic learning rate of its own.

    SB3 has one ``learning_rate`` for the actor and the critic and resets both optimizers to it before every
    training call; this mixin sets the critic's back to ``critic_learning_rate`` right after.
    """

    critic: Any
    exploration: TruncatedNormalNoise | None
    critic_learning_rate: float | None

    def __init__(
        self,
        *args: Any,
        critic_learning_rate: float | None = None,
        exploration: TruncatedNormalNoise | None = None,
        **kwargs: Any,
    ) -> None:
        self.critic_learning_rate = critic_learning_rate
        self.exploration = exploration
        super().__init__(*args, **kwargs)

    def _update_learning_rate(self, optimizers: Any) -> None:
        super()._update_learning_rate(optimizers)  # type: ignore[misc]
        if self.critic_learning_rate is not None:
            for group in self.critic.optimizer.param_groups:
                group["lr"] = self.critic_learning_rate

    def _sample_action(self, learning_starts: int, action_noise: ActionNoise | None = None, n_envs: int = 1):
        if self.exploration is None or self.num_timesteps < learning_starts:  # type: ignore[attr-defined]
            return super()._sample_action(learning_starts, action_noise, n_envs)  # type: ignore[misc]
        action, _ = self.predict(self._last_obs, deterministic=True)  # type: ignore[attr-defined]
        scaled = self.exploration.around(self.policy.scale_action(action))  # type: ignore[attr-defined]
        return self.policy.unscale_action(scaled), scaled  # type: ignore[attr-defined]


class HaqDDPG(_HaqActorCritic, DDPG):
    """SB3 DDPG with HAQ's exploration and critic learning rate."""


class HaqTD3(_HaqActorCritic, TD3):
    """SB3 TD3 with HAQ's exploration and critic learning rate."""


ALGORITHMS: dict[str, type[BaseAlgorithm]] = {"ddpg": HaqDDPG, "td3": HaqTD3, "sac": SAC, "ppo": PPO, "a2c": A2C}


def default_kwargs(algorithm: str, steps_per_episode: int) -> dict[str, Any]:
    """The defaults of ``algorithm`` for episodes of ``steps_per_episode`` steps (see the module docstring)."""
    if algorithm in ("ddpg", "td3", "sac"):
        kwargs: dict[str, Any] = {
            "policy_kwargs": {"net_arch": list(HAQ_NET_ARCH)},
            "learning_rate": HAQ_ACTOR_LR if algorithm != "sac" else 3e-4,
            "tau": HAQ_TAU,
            "gamma": HAQ_GAMMA,
            "batch_size": HAQ_BATCH_SIZE,
            "buffer_size": HAQ_BUFFER_EPISODES * steps_per_episode,
            "warmup_episodes": HAQ_WARMUP_EPISODES,
            # One gradient step per collected transition, every episode (HAQ updates once per step).
            "train_freq": (steps_per_episode, "step"),
            "gradient_steps": -1,
        }
        if algorithm != "sac":
            kwargs.update(critic_learning_rate=HAQ_CRITIC_LR, noise_sigma=HAQ_NOISE_SIGMA, noise_decay=HAQ_NOISE_DECAY)
        return kwargs
    if algorithm == "ppo":
        n_steps = PPO_EPISODES_PER_UPDATE * steps_per_episode
        return {"gamma": 1.0, "n_steps": n_steps, "batch_size": n_steps // 2, "n_epochs": 10, "discrete": True}
    return {"gamma": 1.0, "n_steps": steps_per_episode, "discrete": True}


class RLOptions(SearcherOptions):
    """``agent.kwargs`` every RL searcher takes: stable-baselines3's keyword arguments (unset: the defaults of
    :func:`default_kwargs`, else stable-baselines3's) and ``checkpoint_every``."""

    learning_rate: float | None = Field(None, gt=0.0)
    gamma: float | None = Field(None, ge=0.0, le=1.0)
    batch_size: int | None = Field(None, ge=1)
    policy_kwargs: dict[str, Any] | None = None
    checkpoint_every: int = Field(DEFAULT_CHECKPOINT_EVERY, ge=1)


class OffPolicyOptions(RLOptions):
    """The off-policy algorithms' keys: the replay buffer, its updates, the warm-up."""

    buffer_size: int | None = Field(None, ge=1)
    learning_starts: int | None = Field(None, ge=0)
    tau: float | None = Field(None, gt=0.0, le=1.0)
    train_freq: int | Annotated[tuple[int, Literal["step", "episode"]], Strict(False)] | None = None
    """Steps, or ``[n, "step" | "episode"]`` (a YAML list)."""
    gradient_steps: int | None = None
    optimize_memory_usage: bool | None = None
    n_steps: int | None = Field(None, ge=1)
    warmup_episodes: int | None = Field(None, ge=0)


class DDPGOptions(OffPolicyOptions):
    """DDPG's keys: HAQ's critic learning rate and truncated-normal exploration."""

    critic_learning_rate: float | None = Field(None, gt=0.0)
    noise_sigma: float | None = Field(None, ge=0.0)
    noise_decay: float | None = Field(None, gt=0.0, le=1.0)


class TD3Options(DDPGOptions):
    """TD3's keys: DDPG's and the delayed, smoothed target policy."""

    policy_delay: int | None = Field(None, ge=1)
    target_policy_noise: float | None = Field(None, ge=0.0)
    target_noise_clip: float | None = Field(None, ge=0.0)


class SACOptions(OffPolicyOptions):
    """SAC's keys: the entropy coefficient and its target, state-dependent exploration."""

    ent_coef: float | str | None = None
    target_update_interval: int | None = Field(None, ge=1)
    target_entropy: float | str | None = None
    use_sde: bool | None = None
    sde_sample_freq: int | None = None
    use_sde_at_warmup: bool | None = None


class OnPolicyOptions(RLOptions):
    """The on-policy algorithms' keys: rollouts, advantages, the action space."""

    n_steps: int | None = Field(None, ge=1)
    gae_lambda: float | None = Field(None, ge=0.0, le=1.0)
    ent_coef: float | None = None
    vf_coef: float | None = None
    max_grad_norm: float | None = Field(None, gt=0.0)
    normalize_advantage: bool | None = None
    use_sde: bool | None = None
    sde_sample_freq: int | None = None
    discrete: bool | None = None
    """The ``MultiDiscrete`` action space (the default) or, with false, the Box."""


class PPOOptions(OnPolicyOptions):
    """PPO's keys: epochs per update and the clipping."""

    n_epochs: int | None = Field(None, ge=1)
    clip_range: float | None = Field(None, gt=0.0)
    clip_range_vf: float | None = Field(None, gt=0.0)
    target_kl: float | None = Field(None, gt=0.0)


class A2COptions(OnPolicyOptions):
    """A2C's keys: its RMSprop optimizer."""

    rms_prop_eps: float | None = Field(None, gt=0.0)
    use_rms_prop: bool | None = None


OPTIONS: dict[str, type[RLOptions]] = {
    "ddpg": DDPGOptions,
    "td3": TD3Options,
    "sac": SACOptions,
    "ppo": PPOOptions,
    "a2c": A2COptions,
}
"""The typed ``agent.kwargs`` of each algorithm."""


class RLSearcher(Searcher):
    """A stable-baselines3 algorithm searching bit-widths in :class:`~mpq_rl.envs.BitWidthEnv`."""

    def __init__(self, algorithm: str, kwargs: dict[str, Any] | None = None) -> None:
        if algorithm not in ALGORITHMS:
            raise UserError(f"unknown RL algorithm {algorithm!r}; choose one of {', '.join(ALGORITHMS)}")
        self.algorithm = algorithm
        self.options = parse_options(algorithm, kwargs or {}, OPTIONS[algorithm])
        self.checkpoint_every = self.options.checkpoint_every
        self.model: BaseAlgorithm | None = None

    # -- settings ------------------------------------------------------------------------------------------------

    def settings(self, steps_per_episode: int) -> dict[str, Any]:
        """The resolved keyword arguments: the defaults with ``agent.kwargs`` on top."""
        settings = default_kwargs(self.algorithm, steps_per_episode)
        settings.update(self.options.model_dump(exclude_unset=True, exclude={"checkpoint_every"}))
        return settings

    def _build(self, env: VecEnv, context: SearchContext, steps_per_episode: int) -> BaseAlgorithm:
        settings = self.settings(steps_per_episode)
        settings.pop("discrete", None)
        warmup = int(settings.pop("warmup_episodes", 0))
        sigma, decay = settings.pop("noise_sigma", None), settings.pop("noise_decay", HAQ_NOISE_DECAY)
        cls = ALGORITHMS[self.algorithm]
        if issubclass(cls, OffPolicyAlgorithm):
            settings.setdefault("learning_starts", warmup * steps_per_episode)
        if cls in (HaqDDPG, HaqTD3) and sigma is not None and "action_noise" not in settings:
            settings["exploration"] = TruncatedNormalNoise(
                env.action_space.shape, sigma, decay, warmup, seed=context.seed
            )
        return cls("MlpPolicy", env, seed=context.seed, device="cpu", verbose=0, **settings)

    # -- environments -------------------------------------------------------------------------------------------

    def _discrete(self) -> bool:
        return bool(self.settings(1).get("discrete", False))

    def _envs(self, context: SearchContext) -> VecEnv:
        discrete = self._discrete()
        if context.n_envs <= 1:
            return DummyVecEnv([lambda: BitWidthEnv(problem=context.problem, discrete=discrete)])
        envs = [BitWidthEnv(problem=context.problem, discrete=discrete) for _ in range(context.n_envs)]
        return PooledVecEnv(envs, context)

    # -- checkpoints --------------------------------------------------------------------------------------------

    def resume_point(self, output: Path) -> int | None:
        """Episodes covered by the checkpoint in ``output`` (None if there is none to continue from); its files are
        read and checked here, before the run writes anything."""
        checkpoint = read_checkpoint(Path(output) / CHECKPOINT_DIR)
        if checkpoint is None or checkpoint.state.algorithm != self.algorithm:
            return None
        return checkpoint.state.episodes

    def save_checkpoint(self, model: BaseAlgorithm, context: SearchContext) -> None:
        """The checkpoint of ``model`` after the episodes recorded so far (:mod:`mpq_rl.agents.checkpoint`)."""
        save_checkpoint(model, context.output / CHECKPOINT_DIR, self.algorithm, context.recorded)

    # -- the search ---------------------------------------------------------------------------------------------

    def search(self, context: SearchContext) -> None:
        with one_thread():
            self._search(context)

    def _search(self, context: SearchContext) -> None:
        steps = len(context.problem.searched)
        env = self._envs(context)
        model = self._build(env, context, steps)
        found = read_checkpoint(context.output / CHECKPOINT_DIR) if context.recorded > 0 else None
        point = None if found is None else (found.state.algorithm, found.state.episodes)
        resuming = point == (self.algorithm, context.recorded)
        if found is not None and resuming:
            # The checkpoint's values go into the freshly built algorithm: nothing in the run folder is unpickled.
            load_checkpoint(model, found)
        self.model = model
        if context.log_dir is not None:
            model.set_logger(agent_logger(context.log_dir, steps))
        callback = RecordEpisodes(
            context,
            checkpoint=lambda model: self.save_checkpoint(model, context),
            every=self.checkpoint_every,
        )
        try:
            model.learn(
                total_timesteps=(context.remaining + context.n_envs) * steps,
                callback=callback,
                reset_num_timesteps=not resuming,
                log_interval=1,
            )
        except KeyboardInterrupt:
            self.save_checkpoint(model, context)
            raise
        finally:
            model.logger.close()
        self.save_checkpoint(model, context)


def _searcher(algorithm: str) -> Callable[..., RLSearcher]:
    def build(**kwargs: Any) -> RLSearcher:
        return RLSearcher(algorithm, kwargs)

    build.__name__ = build.__qualname__ = algorithm
    build.__doc__ = f"The {algorithm} searcher with ``agent.kwargs``."
    return build


ddpg, td3, sac, ppo, a2c = (_searcher(name) for name in ("ddpg", "td3", "sac", "ppo", "a2c"))
"""The registered RL searchers (:data:`mpq_rl.agents.SEARCHERS`)."""
