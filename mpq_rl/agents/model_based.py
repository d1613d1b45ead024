"""``mbppo``, the default searcher: model-based reinforcement learning for bit-widths.

A stable-baselines3 PPO agent learns to choose bits in :class:`~mpq_rl.envs.BitWidthEnv`, but most of its
episodes are played against a learned model of the proxy instead of the evaluator (Dyna-style model-based RL), so
real evaluations go only to the policies the agent and the model agree are promising:

1. **Sensitivity** (no evaluation; its wall time is reported in ``summary.json`` under ``search``): the relative
   weight and input quantization error of every searched layer at every candidate bit-width
   (:mod:`mpq_rl.search.sensitivity`). The agent observes them (the environment's ``sensitivity`` features), and they
   are
   the surrogate's inputs.
2. **Prior** (``probes``, ``prior``): one evaluation per searched layer measures it alone at its cheapest bits
   (every other layer at the highest), as AMP-style sensitivity analysis does; the surrogate is fitted on these
   probes (without them it starts from "the proxy loss is the total quantization noise": every layer equally
   important), and the agent trains ``prior_episodes`` episodes on it, so its first proposals already follow the
   measured sensitivity ordering instead of being uniform.
3. **Rounds**, until ``agent.episodes`` are spent: the agent proposes ``candidates`` policies per budget (sampled
   from its stochastic policy, plus its most likely one), joined by every policy one layer away from the
   ``neighbours`` best evaluated ones (a trust region around the incumbents) and by the surrogate's Lagrangian
   optima within the budget (``solver``, for the ensemble mean and four members); those not evaluated yet are ranked
   by an upper confidence bound of the surrogate (mean + ``exploration`` x std over the ensemble) and the best
   ``evaluations_per_round`` (default: ``agent.episodes / 20``, at most 16) are evaluated for real (every one
   counts as an evaluation); the surrogate is refitted on every evaluation so far (:mod:`mpq_rl.agents.surrogate`); the
   agent trains ``model_episodes`` more episodes on it.
   In the model environment each step's reward is minus the layer's predicted proxy loss (the surrogate is
   additive over layers, so the rewards of an episode sum to its predicted loss): dense rewards, exact credit.
   The agent also observes the surrogate's predicted loss of each of the layer's candidates (the environment's
   model features), so what it learns carries over as the surrogate is refitted.
4. **Budget conditioning** (``budgets``): with a list of budgets, one agent learns all of them (the budget is an
   observation; each episode draws one), proposals are spread over the budgets, and ``summary.json`` reports the
   best policy found for each (``best_per_budget``) with its held-out metrics: the Pareto front from one search.

The agent maximizes the predicted proxy within the budget (the projection keeps every episode in budget); which
evaluated policy is best is decided by the run's reward, ties going to the cheaper policy, as for every searcher.

``agent.kwargs`` (defaults in :data:`DEFAULTS`): the numbers above, ``members`` (surrogate ensemble size),
``n_envs`` (model environments PPO steps in lockstep), ``learning_rate``, ``n_epochs``, ``ent_coef``, ``net_arch``
(PPO), and the ablation switches ``sensitivity`` (false: every layer gets the textbook error ``4^-bits`` instead of
its measured one, and the agent observes no errors), ``surrogate`` (false: no model; the agent learns from real
evaluations only, one per episode), ``probes``, ``prior``, ``solver`` (``none``: no optima proposed) and
``neighbours`` (0: none).

Everything but the agent is :class:`~mpq_rl.agents.surrogate_search.SurrogateSearch` (the ``surrogate`` searcher);
this class adds the agent's proposals and training through its hooks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import Field
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv

from mpq_rl.agents.surrogate import Surrogate
from mpq_rl.agents.surrogate_search import SurrogateOptions, SurrogateSearch
from mpq_rl.envs import BitWidthEnv, LearnedRewardEnv
from mpq_rl.search.budget import Budget, Choice
from mpq_rl.search.searcher import SearchContext
from mpq_rl.search.sensitivity import Sensitivity


class MbppoOptions(SurrogateOptions):
    candidates: int = Field(64, ge=1)
    model_episodes: int = Field(64, ge=0)
    prior_episodes: int = Field(512, ge=0)
    n_envs: int = Field(16, ge=1)
    learning_rate: float = 3e-3
    n_epochs: int = Field(4, ge=1)
    ent_coef: float = 0.01
    net_arch: list[int] = Field(default_factory=lambda: [64, 64])
    surrogate: bool = True
    prior: bool = True


EPISODES_PER_UPDATE = 2
"""Episodes each model environment plays between two PPO updates."""


class SurrogateReward:
    """The model environment's reward: minus each layer's predicted proxy loss, scaled so that the all-lowest
    policy loses 1 in all; its features, each candidate's predicted loss divided by the largest of any layer (an
    :class:`~mpq_rl.envs.learned.EpisodeModel`). With an interacting surrogate, each environment plays through its
    own :meth:`episode`, which adds the interaction with the previous layer's choice to each step."""

    def __init__(self, surrogate: Surrogate) -> None:
        self.surrogate = surrogate
        self.n_features = surrogate.sensitivity.weight.shape[1] + surrogate.sensitivity.activation.shape[1]
        sensitivity = surrogate.sensitivity
        self._errors = (sensitivity.weight[:, :, None] + sensitivity.activation[:, None, :]).tolist()
        self.update()

    def update(self) -> None:
        """Take the surrogate's current fit."""
        weight, activation = self.surrogate.layer_losses()
        worst = float(weight.max(axis=1).sum() + activation.max(axis=1).sum())
        scale = 1.0 / worst if worst > 0 else 1.0
        self._weight = (-scale * weight).tolist()
        self._activation = (-scale * activation).tolist()
        self._pairs = (-scale * self.surrogate.pair_coefficients()).tolist()
        top = max(float(weight.max()), float(activation.max()))
        both = np.concatenate([weight, activation], axis=1)
        self._features = (both / top if top > 0 else both).clip(0.0, 1.0).tolist()

    def reward(self, step: int, choice: Choice) -> float:
        return self._weight[step][choice[0]] + self._activation[step][choice[1]]

    def pair_reward(self, step: int, previous: Choice, choice: Choice) -> float:
        """The (scaled, negated) interaction of layer ``step - 1`` at ``previous`` with layer ``step`` at ``choice``."""
        before, now = self._errors[step - 1][previous[0]][previous[1]], self._errors[step][choice[0]][choice[1]]
        return self._pairs[step - 1] * before * now

    def features(self, step: int) -> list[float]:
        return self._features[step]

    def episode(self) -> SurrogateReward | EpisodeReward:
        """What one environment plays against: this object when the surrogate is additive, else an
        :class:`EpisodeReward` that remembers the previous step's choice."""
        return EpisodeReward(self) if self.surrogate.interactions != "none" else self


class EpisodeReward:
    """One environment's view of an interacting :class:`SurrogateReward`: each step's reward adds the interaction
    with the previous step's choice (the environment steps its layers in order from 0)."""

    def __init__(self, shared: SurrogateReward) -> None:
        self.shared = shared
        self.n_features = shared.n_features
        self._previous: Choice | None = None

    def reward(self, step: int, choice: Choice) -> float:
        value = self.shared.reward(step, choice)
        if step > 0 and self._previous is not None:
            value += self.shared.pair_reward(step, self._previous, choice)
        self._previous = choice
        return value

    def features(self, step: int) -> list[float]:
        return self.shared.features(step)


class ModelBasedPPO(SurrogateSearch):
    """PPO trained on a learned surrogate of the proxy, spending real evaluations on its best proposals."""

    name = "mbppo"
    options_model = MbppoOptions

    # -- pieces ---------------------------------------------------------------------------------------------------

    def _env(
        self,
        context: SearchContext,
        sensitivity: Sensitivity,
        fractions: Sequence[float],
        model: SurrogateReward | EpisodeReward | None,
    ):
        options = {
            "discrete": True,
            "sensitivity": sensitivity if self.options.sensitivity else None,
            "budgets": fractions if len(fractions) > 1 else None,
        }
        if model is None:
            return BitWidthEnv(context.problem, **options)
        return LearnedRewardEnv(context.problem, model, **options)

    def _agent(self, env: Any, steps: int, seed: int) -> PPO:
        o = self.options
        n_steps = EPISODES_PER_UPDATE * steps
        return PPO(
            "MlpPolicy",
            env,
            n_steps=n_steps,
            batch_size=n_steps * env.num_envs,  # one minibatch per epoch: few, large steps keep updates cheap
            n_epochs=o.n_epochs,
            learning_rate=o.learning_rate,
            ent_coef=o.ent_coef,
            gamma=1.0,
            gae_lambda=0.95,
            policy_kwargs={"net_arch": list(o.net_arch)},
            seed=seed,
            device="cpu",
            verbose=0,
        )

    # -- the agent, through SurrogateSearch's hooks ------------------------------------------------------------

    def rounds(
        self, context: SearchContext, sensitivity: Sensitivity, fractions: list[float], budgets: dict[float, Budget]
    ) -> None:
        if not self.options.surrogate:
            self._model_free(context, sensitivity, fractions, len(context.problem.searched))
            return
        super().rounds(context, sensitivity, fractions, budgets)

    def start(self, context: SearchContext, sensitivity: Sensitivity, fractions: list[float]) -> None:
        o = self.options
        self.steps = len(context.problem.searched)
        self.reward = SurrogateReward(self.surrogate)
        # one reward view per environment: an interacting surrogate's reward depends on the previous step
        train_env = DummyVecEnv([lambda: self._env(context, sensitivity, fractions, self.reward.episode())] * o.n_envs)
        train_env.seed(context.seed)
        self.agent = self._agent(train_env, self.steps, context.seed)
        self.agent.set_logger(self.board.ppo_logger())
        self.samplers = [self._env(context, sensitivity, fractions, self.reward.episode()) for _ in range(o.candidates)]
        for i, env in enumerate(self.samplers):
            env.reset(seed=context.seed + 1 + i)

    def after_probes(self) -> None:
        if self.options.prior and self.options.prior_episodes:
            self.agent.learn(self.options.prior_episodes * self.steps)

    @property
    def random_first_round(self) -> bool:
        return not self.options.prior

    def proposals(self, budget: Budget) -> list[tuple[Choice, ...]]:
        """The agent's samples from its stochastic policy, and its most likely policy."""
        sampled = _rollout(self.agent, self.samplers, budget.fraction, deterministic=False)
        return sampled + _rollout(self.agent, self.samplers[:1], budget.fraction, deterministic=True)

    def refitted(self) -> None:
        self.reward.update()

    def after_round(self) -> None:
        if self.options.model_episodes:
            self.agent.learn(self.options.model_episodes * self.steps, reset_num_timesteps=False)

    def _model_free(self, context: SearchContext, sensitivity: Sensitivity, fractions: list[float], steps: int):
        """The ``surrogate: false`` ablation: PPO on the real environment, every episode an evaluation (with no
        model there are no model features, no prior training and no probes)."""
        from mpq_rl.agents.sb3 import RecordEpisodes

        env = DummyVecEnv([lambda: self._env(context, sensitivity, fractions, None)])
        env.seed(context.seed)
        agent = self._agent(env, steps, context.seed)
        agent.learn((context.remaining + 1) * steps, callback=RecordEpisodes(context))


def _rollout(agent: PPO, envs: list[BitWidthEnv], fraction: float, deterministic: bool) -> list[tuple[Choice, ...]]:
    """One episode in each of ``envs`` (lockstep, one batched policy call per step) under budget ``fraction``."""
    options = {"budget": fraction} if envs[0].budgets else None
    observations = np.stack([env.reset(options=options)[0] for env in envs])
    infos: list[dict[str, Any]] = [{} for _ in envs]
    for _ in range(envs[0].n_steps):
        actions, _ = agent.predict(observations, deterministic=deterministic)
        results = [env.step(action) for env, action in zip(envs, actions, strict=True)]
        observations = np.stack([r[0] for r in results])
        infos = [r[4] for r in results]
    return [tuple(tuple(int(i) for i in c) for c in info["choices"]) for info in infos]
