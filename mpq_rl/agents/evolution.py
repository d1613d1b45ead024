"""``evolution``: evolutionary search with budget-keeping mutations and selection on growing calibration subsets,
after EvoPress (Sieberling et al., ICML 2025, IST-DASLab/EvoPress), under a hardware budget instead of an average
bit-width.

1. **Population.** ``population`` in-budget policies: the first generation's candidates are the costliest uniform
   setting that fits and random in-budget policies filled up towards the budget, selected as below.
2. **Mutation** (level switches that keep the budget). A child copies a parent drawn from the population and makes
   1 to ``switches`` level switches: one layer's weight or activation precision goes one candidate up, and then
   other layers, drawn at random, go one candidate down until the policy fits the budget again. Every child is in
   budget, and every layer's precision can move both ways.
3. **Selection on growing subsets.** The ``offspring`` children of a generation are scored on a random
   ``stages[0][0]`` share of the calibration samples and the best ``stages[0][1]`` survive to the next stage, scored
   on a larger share, and so on; the survivors of the last stage are scored on the whole calibration split (those
   are the recorded episodes) and join the population, which keeps its ``population`` best policies. The samples
   of every stage are drawn afresh each generation (seeded), so no candidate survives by fitting one subset. Ties
   on a coarse proxy (top-1 on a few samples) go to the smaller KL divergence to FP32 where the model has one.
4. **Counting.** Every scored policy counts against ``agent.episodes``: a policy scored on ``k`` of the ``n``
   calibration samples costs ``k / n`` of an evaluation (one forward pass over the whole calibration split is one
   evaluation). Only whole-split scores are recorded as episodes, so a run records fewer episodes than
   ``agent.episodes``; ``summary.json`` reports the subset share under ``search.subset_evaluations``. When what is
   left cannot pay for a generation, the remaining evaluations go to children scored on the whole split.

``agent.kwargs`` (defaults in :class:`EvolutionOptions`): ``population`` (4), ``offspring`` (16), ``switches`` (3, the
most level switches per child), ``stages`` (``[[0.125, 4], [0.5, 1]]``: pairs of sample share and survivors,
shares rising and below 1, survivors falling).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pydantic import Field

from mpq_rl.errors import UserError
from mpq_rl.search.budget import Budget, Choice
from mpq_rl.search.evaluator import Metrics
from mpq_rl.search.rewards import proxy_value
from mpq_rl.search.searcher import SearchContext, Searcher, SearcherOptions, parse_options
from mpq_rl.search.subsets import SubsetScorer


class EvolutionOptions(SearcherOptions):
    population: int = Field(4, ge=1)
    offspring: int = Field(16, ge=1)
    switches: int = Field(3, ge=1)
    stages: list[Any] = Field(default_factory=lambda: [[0.125, 4], [0.5, 1]])
    """Pairs of [share of the calibration samples, survivors]: shares rising in (0, 1), survivors not rising."""


TRIES = 50
"""Attempts at a new child (or a mutation that fits) before giving up on it."""

Policy = tuple[Choice, ...]


def _stages(value: Any) -> list[tuple[float, int]]:
    """``agent.kwargs.stages`` checked: shares rising in (0, 1), survivors at least 1 and not rising."""
    fix = "a list of [share of the calibration samples, survivors], e.g. [[0.125, 4], [0.5, 1]]"
    if not isinstance(value, list):
        raise UserError(f"agent.kwargs.stages must be {fix}, got {value!r}")
    stages = []
    for stage in value:
        ok = isinstance(stage, (list, tuple)) and len(stage) == 2
        share, survivors = stage if ok else (None, None)
        if not (
            isinstance(share, (int, float))
            and 0 < share < 1
            and isinstance(survivors, int)
            and not isinstance(survivors, bool)
            and survivors >= 1
        ):
            raise UserError(f"agent.kwargs.stages must be {fix}, got {value!r}")
        stages.append((float(share), survivors))
    if any(b[0] <= a[0] or b[1] > a[1] for a, b in zip(stages, stages[1:], strict=False)):
        raise UserError(f"agent.kwargs.stages: shares must rise and survivors must not, got {value!r}")
    return stages


def mutate(parent: Policy, budget: Budget, rng: np.random.Generator, switches: int) -> Policy | None:
    """``parent`` after 1 to ``switches`` level switches (one layer up one candidate, others down until it fits);
    None if no switch could be made. ``parent`` must fit ``budget``; the child always does."""
    child = list(parent)
    made = 0
    for _ in range(int(rng.integers(1, switches + 1))):
        for _ in range(TRIES):
            switched = _switch(child, budget, rng)
            if switched is not None:
                child, made = switched, made + 1
                break
    return tuple(child) if made else None


def _switch(policy: list[Choice], budget: Budget, rng: np.random.Generator) -> list[Choice] | None:
    """One level switch of ``policy`` (which fits ``budget``), or None if the drawn one cannot be made to fit."""
    layers = len(policy)
    up = int(rng.integers(layers))
    raised = _step(budget, up, policy[up], +1, rng)
    if raised is None:
        return None
    child = list(policy)
    child[up] = raised
    others = [s for s in range(layers) if s != up]
    while not budget.fits(child):
        lowerable = [s for s in others if _moves(budget, s, child[s], -1)]
        if not lowerable:
            return None
        down = lowerable[int(rng.integers(len(lowerable)))]
        child[down] = _step(budget, down, child[down], -1, rng)
    return child


def _moves(budget: Budget, layer: int, choice: Choice, direction: int) -> list[Choice]:
    """``choice`` with its weight or its activation candidate moved one place in ``direction``, for each move the
    hardware can run."""
    sizes = (len(budget.weight_codes), len(budget.activation_codes))
    moves = []
    for axis in (0, 1):
        moved = list(choice)
        moved[axis] += direction
        if 0 <= moved[axis] < sizes[axis] and not math.isnan(budget.costs[layer, moved[0], moved[1]]):
            moves.append((moved[0], moved[1]))
    return moves


def _step(budget: Budget, layer: int, choice: Choice, direction: int, rng: np.random.Generator) -> Choice | None:
    """One of :func:`_moves`, drawn with ``rng``, or None if there is none."""
    moves = _moves(budget, layer, choice, direction)
    return moves[int(rng.integers(len(moves)))] if moves else None


def filled(policy: list[Choice], budget: Budget, rng: np.random.Generator) -> Policy:
    """``policy`` (in budget) with layers drawn at random raised one candidate at a time while it still fits."""
    policy = list(policy)
    open_layers = list(range(len(policy)))
    while open_layers:
        s = open_layers[int(rng.integers(len(open_layers)))]
        fitting = [c for c in _moves(budget, s, policy[s], +1) if budget.fits([*policy[:s], c, *policy[s + 1 :]])]
        if fitting:
            policy[s] = fitting[int(rng.integers(len(fitting)))]
        else:
            open_layers.remove(s)
    return tuple(policy)


def _rank_key(metrics: Metrics, proxy: float) -> tuple[float, float]:
    """Higher is better: the proxy, then (for a coarse proxy's ties) minus the KL divergence to FP32."""
    return proxy, -metrics.get("kl", 0.0)


class Evolution(Searcher):
    """EvoPress-style evolution: budget-keeping level switches, selection on growing calibration subsets."""

    def __init__(self, **kwargs: Any) -> None:
        options = parse_options("evolution", kwargs, EvolutionOptions)
        self.population = options.population
        self.offspring = options.offspring
        self.switches = options.switches
        self.stages = _stages(options.stages)
        if self.stages and self.stages[0][1] > self.offspring:
            raise UserError(
                f"agent.kwargs.stages: {self.stages[0][1]} survivors of the first stage but only "
                f"{self.offspring} offspring: raise offspring or lower the survivors"
            )

    def generation_cost(self, offspring: int) -> float:
        """Evaluations one generation of ``offspring`` children costs (subset shares included)."""
        counts = [offspring, *(s for _, s in self.stages)]
        return sum(n * share for n, (share, _) in zip(counts, self.stages, strict=False)) + counts[-1]

    def search(self, context: SearchContext) -> None:
        budget = context.problem.budget
        rng = context.rng()
        run = _Run(context, SubsetScorer(context.problem) if self.stages else None, rng)
        # -- the first generation: the costliest uniform setting that fits, and random policies filled up ---------
        candidates = [tuple(c) for c in budget.uniform_choices()[:1]]
        for _ in range(TRIES * self.offspring):
            if len(candidates) >= max(self.offspring, self.population):
                break
            start = filled(budget.projected(_random_choices(budget, rng)), budget, rng)
            if start not in candidates:
                candidates.append(start)
        # -- generations, until the evaluations are spent ---------------------------------------------------------
        while candidates and run.left >= 1:
            if run.subsets is None or self.generation_cost(len(candidates)) > run.left:
                # no stages, or not enough left for them: the children go straight to the whole split
                run.record(candidates[: math.floor(run.left)], self.population)
            else:
                run.record(self.select(run, candidates), self.population)
            candidates = self.children(run, budget, rng)
        context.report.subset_evaluations = round(run.subset_spent, 3)

    def select(self, run: _Run, candidates: list[Policy]) -> list[Policy]:
        """``candidates`` through the subset stages: at each, the best ``survivors`` on fresh samples."""
        subsets = run.subsets
        for share, survivors in self.stages:
            if len(candidates) <= survivors:
                continue
            count = max(round(share * subsets.samples), 1)
            samples = run.rng.choice(subsets.samples, size=count, replace=False)
            metrics = subsets.score([run.context.problem.policy(c) for c in candidates], samples)
            run.subset_spent += len(candidates) * count / subsets.samples
            keys = [_rank_key(m, proxy_value(m, run.context.problem.proxy)) for m in metrics]
            order = sorted(range(len(candidates)), key=lambda i: (*keys[i], -i), reverse=True)
            candidates = [candidates[i] for i in order[:survivors]]
        return candidates

    def children(self, run: _Run, budget: Budget, rng: np.random.Generator) -> list[Policy]:
        """``offspring`` new children of parents drawn from the population (fewer if new ones are hard to find)."""
        found: list[Policy] = []
        for _ in range(TRIES * self.offspring):
            if len(found) == self.offspring:
                break
            parent = run.population[int(rng.integers(len(run.population)))]
            child = mutate(parent, budget, rng, self.switches)
            if child is not None and child not in run.scored and child not in found:
                found.append(child)
        return found


class _Run:
    """One search's state: the whole-split proxies so far, the population, and the evaluations spent."""

    def __init__(self, context: SearchContext, subsets: SubsetScorer | None, rng: np.random.Generator) -> None:
        self.context = context
        self.subsets = subsets
        self.rng = rng
        self.scored: dict[Policy, float] = {}
        self.population: list[Policy] = []
        self.subset_spent = 0.0
        """Subset scores so far, in whole-split evaluations."""

    @property
    def left(self) -> float:
        return self.context.episodes - self.context.recorded - self.subset_spent

    def record(self, candidates: list[Policy], size: int) -> None:
        """Score ``candidates`` on the whole split (recorded episodes); keep the ``size`` best policies so far."""
        episodes = self.context.score_many([list(c) for c in candidates])
        for policy, episode in zip(candidates, episodes, strict=False):
            self.scored[policy] = float(episode.proxy)
        budget = self.context.problem.budget
        self.population = sorted(self.scored, key=lambda c: (-self.scored[c], budget.total(c)))[:size]


def _random_choices(budget: Budget, rng: np.random.Generator) -> list[Choice]:
    return [
        (int(rng.integers(len(budget.weight_codes))), int(rng.integers(len(budget.activation_codes))))
        for _ in budget.names
    ]
