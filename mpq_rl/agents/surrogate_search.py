"""``surrogate``: the default searcher's pipeline without the agent, the baseline a skeptical reviewer builds first.

A learned, additive model of the proxy (:mod:`mpq_rl.agents.surrogate`) is fitted on every evaluation so far; each
round proposes the model's optima within the budget and the incumbents' neighbours, ranks the new ones by an upper
confidence bound of the model, and evaluates the best for real:

1. **Sensitivity** (no evaluation): every layer's relative weight and input quantization error at every candidate
   (:mod:`mpq_rl.search.sensitivity`), the model's inputs (``sensitivity: false``: the textbook ``4^-bits``).
2. **Probes** (``probes``): one evaluation per layer, that layer at its cheapest bits and every other at the
   highest; the model is first fitted on them.
3. **Rounds**, until ``agent.episodes`` are spent: the model's optimum within each budget (``solver``:
   ``relaxation``, the Lagrangian optimum on the convex hull of the loss-cost trade-off; ``exact``, the
   multiple-choice knapsack solved exactly by :func:`mpq_rl.agents.knapsack.ranked_policies`; ``none``: no optima),
   for the ensemble mean and four members, joined by every in-budget policy one layer away from the
   ``neighbours`` best evaluated ones; those not evaluated yet are ranked by the model's mean + ``exploration`` x
   ensemble std, and the best ``evaluations_per_round`` (default ``agent.episodes / 20``, at most 16) are evaluated
   (each counts); random in-budget policies fill a round the proposals cannot. The model is refitted after every
   round.
4. **Budgets** (``budgets``): with a list of budgets, each round proposes for every one of them, and
   ``summary.json`` reports the best policy found for each.

``mbppo`` (:mod:`mpq_rl.agents.model_based`) is this searcher with a PPO agent trained on the model adding its own
proposals to each round: the difference between the two is what the agent contributes.

``agent.kwargs`` (defaults in :data:`DEFAULTS`): the names above, ``members`` (ensemble size) and ``interactions``
(``adjacent``: the model adds a term per pair of consecutive layers, see :mod:`mpq_rl.agents.surrogate`; the solvers
then optimize only its additive part, the UCB ranking the whole model).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Collection
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field

from mpq_rl.agents.knapsack import ranked_policies
from mpq_rl.agents.learning_board import LearningBoard
from mpq_rl.agents.surrogate import Surrogate
from mpq_rl.search.budget import Budget, Choice
from mpq_rl.search.searcher import SearchContext, Searcher, SearcherOptions, parse_options
from mpq_rl.search.sensitivity import Sensitivity, measure_sensitivity
from mpq_rl.search.threads import one_thread


class SurrogateOptions(SearcherOptions):
    evaluations_per_round: int | None = Field(None, ge=1)
    exploration: float = 1.0
    neighbours: int = Field(3, ge=0)
    members: int = Field(8, ge=1)
    budgets: list[Annotated[float, Field(gt=0.0, allow_inf_nan=False)]] = Field(default_factory=list)
    """Positive fractions of W8A8."""
    solver: Literal["relaxation", "exact", "none"] = "relaxation"
    interactions: Literal["none", "adjacent"] = "none"
    sensitivity: bool = True
    probes: bool = True


ROUNDS = 20
"""With ``evaluations_per_round: null`` (the default), rounds of ``agent.episodes / 20`` evaluations (at most
:data:`MAX_ROUND`): the surrogate is refitted about 20 times, whatever the evaluation budget."""
MAX_ROUND = 16
SOLVED_MEMBERS = 4
"""Ensemble members whose own optimum is proposed besides the ensemble mean's."""

Policy = tuple[Choice, ...]


class SurrogateSearch(Searcher):
    """Surrogate, solver, trust-region neighbours and UCB ranking; subclasses add proposals of their own."""

    name = "surrogate"
    options_model: type[SurrogateOptions] = SurrogateOptions

    def __init__(self, **kwargs: Any) -> None:
        self.options = parse_options(self.name, kwargs, self.options_model)
        self.surrogate: Surrogate | None = None
        """The model as last fitted by :meth:`search` (for inspection)."""

    # -- hooks for a searcher that adds an agent ----------------------------------------------------------------

    def start(self, context: SearchContext, sensitivity: Sensitivity, fractions: list[float]) -> None:
        """Called once the surrogate exists, before the probes."""

    def after_probes(self) -> None:
        """Called after the probes were evaluated (and the surrogate fitted on them)."""

    def proposals(self, budget: Budget) -> list[Policy]:
        """Policies to consider besides the solver's and the neighbours', ranked with them; none here."""
        return []

    def refitted(self) -> None:
        """Called after every refit of the surrogate."""

    def after_round(self) -> None:
        """Called after a round's evaluations, unless the evaluation budget is spent."""

    @property
    def random_first_round(self) -> bool:
        """Whether the first round draws random policies instead of proposing."""
        return False

    # -- the search ---------------------------------------------------------------------------------------------

    def search(self, context: SearchContext) -> None:
        self.board = LearningBoard(context.log_dir, context.problem.proxy.key, context.episodes)
        try:
            with one_thread():  # small models: one thread is fastest, and never oversubscribes a busy machine
                self._search(context)
        finally:
            self.board.close()

    def sensitivity(self, context: SearchContext) -> Sensitivity:
        problem, budget = context.problem, context.problem.budget
        if not self.options.sensitivity:
            return Sensitivity.theoretical(len(problem.searched), budget.weight_codes, budget.activation_codes)
        return measure_sensitivity(
            problem.evaluator.simulator, problem.searched, budget.weight_codes, budget.activation_codes
        )

    def _search(self, context: SearchContext) -> None:
        o, problem = self.options, context.problem
        fractions = sorted({problem.budget.fraction, *(float(b) for b in o.budgets)})
        budgets = {f: problem.budget.with_fraction(f) for f in fractions}
        sensitivity = self.sensitivity(context)
        context.report.sensitivity_seconds = round(sensitivity.seconds, 4)
        context.report.budgets = fractions
        self.rounds(context, sensitivity, fractions, budgets)

    def rounds(
        self, context: SearchContext, sensitivity: Sensitivity, fractions: list[float], budgets: dict[float, Budget]
    ) -> None:
        """Probes, then rounds of proposals ranked by the surrogate, until the evaluations are spent."""
        o, problem = self.options, context.problem
        proxy = problem.proxy
        link = "noise" if proxy.metric == "fidelity" and proxy.fidelity == "cosine" else "linear"
        self.surrogate = Surrogate(
            sensitivity,
            problem.proxy_fp32,
            members=o.members,
            seed=context.seed,
            link=link,
            interactions=o.interactions,
        )
        self.start(context, sensitivity, fractions)
        rng = context.rng()
        evaluated: dict[Policy, float] = {}
        if o.probes:
            found = probes(problem.budget)
            self._evaluate(context, found, evaluated, dict.fromkeys(found, "probes"))
        self.after_probes()
        round_size = o.evaluations_per_round or min(max(context.episodes // ROUNDS, 1), MAX_ROUND)
        first = True
        while not context.done:
            batch: list[Policy] = []
            origin: dict[Policy, str] = {}  # where each proposal came from, for the dashboard
            per_budget = math.ceil(round_size / len(fractions))
            for fraction in fractions:
                if first and self.random_first_round:
                    found = random_policies(budgets[fraction], rng, per_budget, {*evaluated, *batch})
                else:
                    found = self._propose(budgets[fraction], per_budget, evaluated, batch, origin)
                    if len(found) < per_budget:  # the proposals ran dry: explore around them at random
                        taken = {*evaluated, *batch, *found}
                        found += random_policies(budgets[fraction], rng, per_budget - len(found), taken)
                for policy in found:
                    origin.setdefault(policy, "random")
                batch += [c for c in dict.fromkeys(found) if c not in batch]
            first = False
            if not batch:  # every policy of the space has been evaluated
                break
            self._evaluate(context, batch, evaluated, origin)
            if not context.done:
                self.after_round()
        context.report.surrogate_samples = self.surrogate.samples

    def _propose(
        self,
        budget: Budget,
        count: int,
        evaluated: dict[Policy, float],
        taken: list[Policy],
        origin: dict[Policy, str],
    ) -> list[Policy]:
        """The ``count`` best new policies within ``budget`` among the subclass's proposals, the surrogate's optima
        and the incumbents' neighbours, by the surrogate's UCB; ``origin`` learns where each came from (the first
        of those that proposed it)."""
        sampled = self.proposals(budget)
        origin.update({policy: "agent" for policy in sampled if policy not in origin})
        if self.options.solver != "none":
            optima = solver_optima(budget, self.surrogate, self.options.solver)
            origin.update({policy: "relaxation" for policy in optima if policy not in origin})
            sampled += optima
        if self.options.neighbours:
            near = neighbours(budget, evaluated, self.options.neighbours)
            origin.update({policy: "neighbours" for policy in near if policy not in origin})
            sampled += near
        fresh = list(dict.fromkeys(c for c in sampled if c not in evaluated and c not in taken))
        if not fresh:
            return []
        mean, std = self.surrogate.predict(np.array(fresh))
        score = mean + self.options.exploration * std
        order = np.lexsort((np.arange(len(fresh)), -score))
        return [fresh[i] for i in order[:count]]

    def _evaluate(
        self, context: SearchContext, batch: list[Policy], evaluated: dict[Policy, float], origin: dict[Policy, str]
    ) -> None:
        """Score ``batch`` for real (recorded, counted), add the proxies to ``evaluated``, refit the surrogate; show
        the surrogate's predictions of the batch against the measurements, and where the batch came from, on the
        learning board."""
        predicted = self.surrogate.predict(np.array(batch))[0] if batch else np.zeros(0)
        episodes = context.score_many([list(c) for c in batch])
        for choices, episode in zip(batch, episodes, strict=False):
            evaluated[choices] = float(episode.proxy)
        scored = batch[: len(episodes)]
        self.board.evaluated(
            context.recorded,
            predicted[: len(scored)],
            [evaluated[c] for c in scored],
            Counter(origin[c] for c in scored),
        )
        self.surrogate.fit(list(evaluated), list(evaluated.values()))
        self.refitted()


def solver_optima(budget: Budget, surrogate: Surrogate, solver: str) -> list[Policy]:
    """The surrogate's optimum within ``budget`` for the ensemble mean and :data:`SOLVED_MEMBERS` members, by
    ``solver`` (``relaxation`` or ``exact``)."""
    costs = np.where(np.isnan(budget.costs), np.inf, budget.costs)
    found = []
    for m in [None, *range(min(SOLVED_MEMBERS, surrogate.members))]:
        weight, activation = surrogate.layer_losses(None if m is None else surrogate.coefficients[m])
        loss = weight[:, :, None] + activation[:, None, :]
        if solver == "exact":
            optimum = exact_optimum(budget, loss)
            if optimum is not None:
                found.append(optimum)
        else:
            found.append(relaxation_optimum(budget, loss, costs))
    return [c for c in found if budget.fits(c)]


def exact_optimum(budget: Budget, loss: np.ndarray) -> Policy | None:
    """The policy of least summed ``loss`` ``[layer, w, a]`` within ``budget`` (the multiple-choice knapsack,
    solved exactly), or None if nothing fits."""
    capacity = (budget.limit - budget.fixed_cost) * (1.0 - 1e-9)
    best = next(ranked_policies(loss, budget.costs, capacity), None)
    return None if best is None else tuple(best)


def relaxation_optimum(budget: Budget, loss: np.ndarray, costs: np.ndarray) -> Policy:
    """The Lagrangian optimum of ``loss`` ``[layer, w, a]`` within ``budget``.

    The loss is additive over layers, so for a price ``lam`` on cost each layer independently takes the pair
    minimizing ``loss + lam * cost``; the smallest price whose policy fits (found by bisection) gives a policy on
    the convex hull of the loss-cost trade-off, the optimum HAWQ's ILP finds when that hull is tight.
    """
    scale = float(np.nanmax(budget.costs)) or 1.0

    def policy(price: float) -> Policy:
        flat = (loss + price * costs / scale).reshape(len(loss), -1).argmin(axis=1)
        return tuple((int(i) // costs.shape[2], int(i) % costs.shape[2]) for i in flat)

    low, high = 0.0, 1.0
    while not budget.fits(policy(high)) and high < 1e12:
        high *= 4.0
    for _ in range(40):
        middle = (low + high) / 2.0
        low, high = (low, middle) if budget.fits(policy(middle)) else (middle, high)
    return policy(high)


def probes(budget: Budget) -> list[Policy]:
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


def neighbours(budget: Budget, evaluated: dict[Policy, float], best: int) -> list[Policy]:
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


def random_policies(budget: Budget, rng: np.random.Generator, count: int, taken: Collection[Policy]) -> list[Policy]:
    """Up to ``count`` uniformly drawn policies not in ``taken``, projected into ``budget`` (a bounded number of
    tries)."""
    found: list[Policy] = []
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
