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
   optima within the budget (``relaxation``, for the ensemble mean and four members); those not evaluated yet are ranked
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

``agent.kwargs`` (:class:`MbppoOptions`): the numbers above, ``members`` (surrogate ensemble size),
``n_envs`` (model environments PPO steps in lockstep), ``learning_rate``, ``n_epochs``, ``ent_coef``, ``net_arch``
(PPO), and the ablation switches ``sensitivity`` (false: every layer gets the textbook error ``4^-bits`` instead of
its measured one, and the agent observes no errors), ``surrogate`` (false: no model; the agent learns from real
evaluations only, one per episode), ``probes``, ``prior``, ``relaxation`` and ``neighbours`` (0: none).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from typing import Annotated, Any

import numpy as np
from pydantic import Field
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv

from mpq_rl.agents.surrogate import Surrogate
from mpq_rl.envs import BitWidthEnv, LearnedRewardEnv
from mpq_rl.search.budget import Budget, Choice
from mpq_rl.search.searcher import SearchContext, Searcher, SearcherOptions, parse_options
from mpq_rl.search.sensitivity import Sensitivity, measure_sensitivity
from mpq_rl.search.threads import one_thread


class MbppoOptions(SearcherOptions):
    evaluations_per_round: int | None = Field(None, ge=1)
    candidates: int = Field(64, ge=1)
    model_episodes: int = Field(64, ge=0)
    prior_episodes: int = Field(512, ge=0)
    exploration: float = 1.0
    neighbours: int = Field(3, ge=0)
    members: int = Field(8, ge=1)
    budgets: list[Annotated[float, Field(gt=0.0, allow_inf_nan=False)]] = Field(default_factory=list)
    """Positive fractions of W8A8."""
    n_envs: int = Field(16, ge=1)
    learning_rate: float = 3e-3
    n_epochs: int = Field(4, ge=1)
    ent_coef: float = 0.01
    net_arch: list[int] = Field(default_factory=lambda: [64, 64])
    sensitivity: bool = True
    surrogate: bool = True
    prior: bool = True
    probes: bool = True
    relaxation: bool = True


ROUNDS = 20
"""With ``evaluations_per_round: null`` (the default), rounds of ``agent.episodes / 20`` evaluations (at most
:data:`MAX_ROUND`): the surrogate is refitted about 20 times, whatever the evaluation budget."""
MAX_ROUND = 16
EPISODES_PER_UPDATE = 2
"""Episodes each model environment plays between two PPO updates."""


class SurrogateReward:
    """The model environment's reward: minus each layer's predicted proxy loss, scaled so that the all-lowest
    policy loses 1 in all; its features, each candidate's predicted loss divided by the largest of any layer (an
    :class:`~mpq_rl.envs.learned.EpisodeModel`)."""

    def __init__(self, surrogate: Surrogate) -> None:
        self.surrogate = surrogate
        self.n_features = surrogate.sensitivity.weight.shape[1] + surrogate.sensitivity.activation.shape[1]
        self.update()

    def update(self) -> None:
        """Take the surrogate's current fit."""
        weight, activation = self.surrogate.layer_losses()
        worst = float(weight.max(axis=1).sum() + activation.max(axis=1).sum())
        scale = 1.0 / worst if worst > 0 else 1.0
        self._weight = (-scale * weight).tolist()
        self._activation = (-scale * activation).tolist()
        top = max(float(weight.max()), float(activation.max()))
        both = np.concatenate([weight, activation], axis=1)
        self._features = (both / top if top > 0 else both).clip(0.0, 1.0).tolist()

    def reward(self, step: int, choice: Choice) -> float:
        return self._weight[step][choice[0]] + self._activation[step][choice[1]]

    def features(self, step: int) -> list[float]:
        return self._features[step]


class ModelBasedPPO(Searcher):
    """PPO trained on a learned surrogate of the proxy, spending real evaluations on its best proposals."""

    def __init__(self, **kwargs: Any) -> None:
        options = parse_options("mbppo", kwargs, MbppoOptions)
        self.options = options

    # -- pieces ---------------------------------------------------------------------------------------------------

    def _sensitivity(self, context: SearchContext) -> Sensitivity:
        problem, budget = context.problem, context.problem.budget
        if not self.options.sensitivity:
            return Sensitivity.theoretical(len(problem.searched), budget.weight_codes, budget.activation_codes)
        return measure_sensitivity(
            problem.evaluator.simulator, problem.searched, budget.weight_codes, budget.activation_codes
        )

    def _env(
        self,
        context: SearchContext,
        sensitivity: Sensitivity,
        fractions: Sequence[float],
        model: SurrogateReward | None,
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

    # -- the search -------------------------------------------------------------------------------------------

    def search(self, context: SearchContext) -> None:
        with one_thread():
            self._search(context)

    def _search(self, context: SearchContext) -> None:
        o, problem = self.options, context.problem
        steps = len(problem.searched)
        fractions = sorted({problem.budget.fraction, *(float(b) for b in o.budgets)})
        budgets = {f: problem.budget.with_fraction(f) for f in fractions}
        sensitivity = self._sensitivity(context)
        context.report.sensitivity_seconds = round(sensitivity.seconds, 4)
        context.report.budgets = fractions
        if not o.surrogate:
            self._model_free(context, sensitivity, fractions, steps)
            return
        proxy = problem.proxy
        link = "noise" if proxy.metric == "fidelity" and proxy.fidelity == "cosine" else "linear"
        surrogate = Surrogate(sensitivity, problem.proxy_fp32, members=o.members, seed=context.seed, link=link)
        reward = SurrogateReward(surrogate)
        train_env = DummyVecEnv([lambda: self._env(context, sensitivity, fractions, reward)] * o.n_envs)
        train_env.seed(context.seed)
        agent = self._agent(train_env, steps, context.seed)
        samplers = [self._env(context, sensitivity, fractions, reward) for _ in range(o.candidates)]
        for i, env in enumerate(samplers):
            env.reset(seed=context.seed + 1 + i)
        rng = context.rng()
        evaluated: dict[tuple[Choice, ...], float] = {}
        if o.probes:
            _evaluate(context, _probes(problem.budget), evaluated, reward)
        if o.prior and o.prior_episodes:
            agent.learn(o.prior_episodes * steps)
        round_size = o.evaluations_per_round or min(max(context.episodes // ROUNDS, 1), MAX_ROUND)
        first = True
        while not context.done:
            batch = []
            per_budget = math.ceil(round_size / len(fractions))
            for fraction in fractions:
                if first and not o.prior:
                    found = _random_policies(budgets[fraction], rng, per_budget, {*evaluated, *batch})
                else:
                    found = self._propose(agent, samplers, surrogate, budgets[fraction], per_budget, evaluated, batch)
                    if len(found) < per_budget:  # the agent has converged: explore around it at random
                        taken = {*evaluated, *batch, *found}
                        found += _random_policies(budgets[fraction], rng, per_budget - len(found), taken)
                batch += [c for c in dict.fromkeys(found) if c not in batch]
            first = False
            if not batch:  # every policy of the space has been evaluated
                break
            _evaluate(context, batch, evaluated, reward)
            if not context.done and o.model_episodes:
                agent.learn(o.model_episodes * steps, reset_num_timesteps=False)
        context.report.surrogate_samples = surrogate.samples

    def _propose(
        self,
        agent: PPO,
        samplers: list[BitWidthEnv],
        surrogate: Surrogate,
        budget: Budget,
        count: int,
        evaluated: dict[tuple[Choice, ...], float],
        taken: list[tuple[Choice, ...]],
    ) -> list[tuple[Choice, ...]]:
        """The ``count`` best new policies within ``budget`` among the agent's samples, the surrogate's Lagrangian
        optima and the incumbents' neighbours, by the surrogate's UCB."""
        sampled = _rollout(agent, samplers, budget.fraction, deterministic=False)
        sampled += _rollout(agent, samplers[:1], budget.fraction, deterministic=True)
        if self.options.relaxation:
            sampled += _relaxation_optima(budget, surrogate)
        if self.options.neighbours:
            sampled += _neighbours(budget, evaluated, self.options.neighbours)
        fresh = list(dict.fromkeys(c for c in sampled if c not in evaluated and c not in taken))
        if not fresh:
            return []
        mean, std = surrogate.predict(np.array(fresh))
        score = mean + self.options.exploration * std
        order = np.lexsort((np.arange(len(fresh)), -score))
        return [fresh[i] for i in order[:count]]

    def _model_free(self, context: SearchContext, sensitivity: Sensitivity, fractions: list[float], steps: int):
        """The ``surrogate: false`` ablation: PPO on the real environment, every episode an evaluation (with no
        model there are no model features, no prior training and no probes)."""
        from mpq_rl.agents.sb3 import RecordEpisodes

        env = DummyVecEnv([lambda: self._env(context, sensitivity, fractions, None)])
        env.seed(context.seed)
        agent = self._agent(env, steps, context.seed)
        agent.learn((context.remaining + 1) * steps, callback=RecordEpisodes(context))


def _evaluate(
    context: SearchContext,
    batch: list[tuple[Choice, ...]],
    evaluated: dict[tuple[Choice, ...], float],
    reward: SurrogateReward,
) -> None:
    """Score ``batch`` for real (recorded, counted), add the proxies to ``evaluated``, refit the surrogate."""
    for choices, episode in zip(batch, context.score_many([list(c) for c in batch]), strict=False):
        evaluated[choices] = float(episode.proxy)
    reward.surrogate.fit(list(evaluated), list(evaluated.values()))
    reward.update()


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


def _relaxation_optima(budget: Budget, surrogate: Surrogate, members: int = 4) -> list[tuple[Choice, ...]]:
    """The Lagrangian optimum of the surrogate within ``budget``, for the ensemble mean and a few members.

    The surrogate is additive over layers, so for a price ``lam`` on cost each layer independently takes the pair
    minimizing ``predicted loss + lam * cost``; the smallest price whose policy fits (found by bisection) gives a
    policy on the convex hull of the loss-cost trade-off, the optimum HAWQ's ILP finds for Hessian losses.
    """
    costs = np.where(np.isnan(budget.costs), np.inf, budget.costs)
    scale = float(np.nanmax(budget.costs)) or 1.0
    found = []
    for m in [None, *range(min(members, surrogate.members))]:
        coefficients = None if m is None else surrogate.coefficients[m]
        weight, activation = surrogate.layer_losses(coefficients)
        loss = weight[:, :, None] + activation[:, None, :]

        def policy(price: float, loss: np.ndarray = loss) -> tuple[Choice, ...]:
            flat = (loss + price * costs / scale).reshape(len(loss), -1).argmin(axis=1)
            return tuple((int(i) // costs.shape[2], int(i) % costs.shape[2]) for i in flat)

        low, high = 0.0, 1.0
        while not budget.fits(policy(high)) and high < 1e12:
            high *= 4.0
        for _ in range(40):
            middle = (low + high) / 2.0
            low, high = (low, middle) if budget.fits(policy(middle)) else (middle, high)
        found.append(policy(high))
    return [c for c in found if budget.fits(c)]


def _probes(budget: Budget) -> list[tuple[Choice, ...]]:
    """One policy per searched layer: that layer at its cheapest pair (the most bits among equally cheap ones),
    every other layer at the highest bits. Each measures one layer's sensitivity in the proxy itself."""
    top = (len(budget.weight_codes) - 1, len(budget.activation_codes) - 1)
    found = []
    for step, costs in enumerate(budget.costs):
        cheapest = np.nanmin(costs)
        pair = max((w, a) for w in range(costs.shape[0]) for a in range(costs.shape[1]) if costs[w, a] <= cheapest)
        if pair != top:
            found.append(tuple(pair if s == step else top for s in range(len(budget.names))))
    return found


def _neighbours(budget: Budget, evaluated: dict[tuple[Choice, ...], float], best: int) -> list[tuple[Choice, ...]]:
    """Every policy one layer away from the ``best`` highest-proxy evaluated policies that fit ``budget``."""
    fitting = [c for c in evaluated if budget.fits(c)]
    top = sorted(fitting, key=lambda c: (-evaluated[c], budget.total(c)))[:best]
    found = []
    for choices in top:
        for step in range(len(choices)):
            for w in range(len(budget.weight_codes)):
                for a in range(len(budget.activation_codes)):
                    changed = list(choices)
                    changed[step] = (w, a)
                    if changed[step] != choices[step] and budget.fits(changed):
                        found.append(tuple(changed))
    return found


def _random_policies(
    budget: Budget, rng: np.random.Generator, count: int, taken: Collection[tuple[Choice, ...]]
) -> list[tuple[Choice, ...]]:
    """Up to ``count`` uniformly drawn policies not in ``taken``, projected into ``budget`` (a bounded number of
    tries)."""
    found: list[tuple[Choice, ...]] = []
    for _ in range(50 * count):
        if len(found) == count:
            break
        raw = [
            (int(rng.integers(len(budget.weight_codes))), int(rng.integers(len(budget.activation_codes))))
            for _ in budget.names
        ]
        choices = tuple(budget.projected(raw))
        if choices not in taken and choices not in found:
            found.append(choices)
    return found
