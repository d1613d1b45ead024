"""Greedy sensitivity search in the style of AIMET AMP (Pandey et al. 2023, "A Practical Mixed Precision
Algorithm for Post-Training Quantization"), under a hardware budget instead of BitOps.

1. **Sensitivity.** The proxy of all-highest bits is measured, then, for each searched layer and candidate pair,
   the proxy with only that layer at the pair (every other layer at the highest candidate bits). A layer's loss
   at a pair is the drop from all-highest. Each measurement is a scored episode, so it counts as an evaluation.
   Pairs that cannot be part of any in-budget policy (too costly even with every other layer at its cheapest)
   are skipped, and so are pairs *dominated* on this hardware: another candidate with at least as many weight and
   activation bits costs no more (on Bit Fusion, 3 bits cost what 4 do). If the remaining pairs would take more
   than ``sensitivity_share`` of the evaluations, the bit candidates are thinned (the lowest and highest, then
   powers of two, then the most spread) until they fit.
2. **Pareto walk.** From all-highest, repeatedly lower the (layer, pair) step that loses the least proxy per unit
   of cost saved, until the policy fits the budget; the step that crosses into the budget is the one that fits
   with the least loss. Up to ``pareto_points`` points of the walk are scored, the final (in-budget) one always.
3. **Refinement** (``refine``). The remaining evaluations go to in-budget neighbours of the best policy found
   (one or two layers changed to another measured pair), most promising first by the summed layer losses,
   moving to a neighbour whenever it scores better, until the evaluations or the neighbours run out; neighbours
   one unmeasured pair away come last. Neighbours are scored ``agent.n_envs`` at a time: a batch is recorded whole
   before moving, so the results depend on ``n_envs`` (not on the workers); phases 1 and 2 use every worker.

``agent.kwargs``: ``sensitivity_share`` (0.75), ``pareto_points`` (8), ``refine`` (true).
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
from pydantic import Field

from mpq_rl.search.budget import Budget, Choice
from mpq_rl.search.searcher import SearchContext, Searcher, SearcherOptions, parse_options


class GreedyOptions(SearcherOptions):
    sensitivity_share: float = Field(0.75, ge=0.0, le=1.0)
    pareto_points: int = Field(8, ge=1)
    refine: bool = True


Losses = list[dict[Choice, float]]
"""Per searched layer: measured pair -> proxy loss with only that layer at the pair (0 at the highest bits)."""


def keep_order(bits: tuple[int, ...]) -> list[int]:
    """Indices of ``bits`` in the order they survive thinning: extremes, powers of two, then the most spread."""
    order = [0, len(bits) - 1] if len(bits) > 1 else [0]
    order += [i for i in reversed(range(len(bits))) if i not in order and bits[i] & (bits[i] - 1) == 0]
    while len(order) < len(bits):
        rest = [i for i in range(len(bits)) if i not in order]
        order.append(max(rest, key=lambda i: min(abs(bits[i] - bits[j]) for j in order)))
    return order


def measurable_pairs(budget: Budget, step: int, weights: list[int], activations: list[int]) -> list[Choice]:
    """The pairs of layer ``step`` worth measuring among the given candidate indices (see the module doc)."""
    costs = budget.costs[step]
    top = budget.top_choice()
    room = budget.limit - budget.fixed_cost - (budget.suffix_min[0] - budget.min_costs[step])
    pairs = [(w, a) for w in weights for a in activations if costs[w, a] <= room and (w, a) != top]
    rivals = [*pairs, top]

    def dominated(p: Choice) -> bool:
        return any(q != p and q[0] >= p[0] and q[1] >= p[1] and costs[q] <= costs[p] for q in rivals)

    return [p for p in pairs if not dominated(p)]


def measurement_plan(budget: Budget, cap: int) -> list[list[Choice]]:
    """Per searched layer, the pairs to measure: at most ``cap`` in all, thinning the bit candidates to fit."""
    w_order, a_order = keep_order(budget.weight_codes), keep_order(budget.activation_codes)
    kw, ka = len(w_order), len(a_order)
    while True:
        plan = [measurable_pairs(budget, s, w_order[:kw], a_order[:ka]) for s in range(len(budget.names))]
        if sum(map(len, plan)) <= cap or kw == ka == 1:
            break
        if kw >= ka:
            kw -= 1
        else:
            ka -= 1
    if sum(map(len, plan)) > cap:
        # one pair per layer left and still too many: measure the layers whose lowering saves the most
        top = budget.top_choice()
        saving = {s: budget.cost(s, top) - budget.cost(s, p[0]) for s, p in enumerate(plan) if p}
        keep = set(sorted(saving, key=saving.__getitem__, reverse=True)[:cap])
        plan = [p if s in keep else [] for s, p in enumerate(plan)]
    return plan


def pareto_walk(budget: Budget, losses: Losses) -> list[list[Choice]]:
    """The greedy walk from all-highest bits to the first in-budget policy (every state, the first included)."""
    state = [budget.top_choice()] * len(budget.names)
    path = [list(state)]
    while not budget.fits(state):
        total = budget.total(state)
        moves = []
        for s, measured in enumerate(losses):
            current_cost, current_loss = budget.cost(s, state[s]), measured[state[s]]
            for pair, loss in measured.items():
                saved = current_cost - budget.cost(s, pair)
                if saved > 0:
                    moves.append((loss - current_loss, saved, s, pair))
        if not moves:
            break
        finishing = [m for m in moves if total - m[1] <= budget.limit]
        if finishing:
            _, _, s, pair = min(finishing, key=lambda m: (m[0], -m[1], m[2]))
        else:
            _, _, s, pair = min(moves, key=lambda m: (m[0] / m[1], -m[1], m[2]))
        state[s] = pair
        path.append(list(state))
    if not budget.fits(state):
        path.append(budget.projected(state))
    return path


def neighbours(budget: Budget, losses: Losses, state: list[Choice]) -> list[list[Choice]]:
    """In-budget policies one or two measured-pair changes from ``state``, lowest summed loss first, then those
    one unmeasured pair away (costliest first)."""
    moves = [(s, pair) for s, measured in enumerate(losses) for pair in measured if pair != state[s]]
    found = []
    for count in (1, 2):
        for combo in itertools.combinations(moves, count):
            if len({s for s, _ in combo}) < count:
                continue
            policy = list(state)
            for s, pair in combo:
                policy[s] = pair
            if budget.fits(policy):
                found.append(policy)

    def rank(policy: list[Choice]) -> tuple[float, float]:
        return sum(losses[s].get(c, math.inf) for s, c in enumerate(policy)), -budget.total(policy)

    unmeasured = []
    for s, measured in enumerate(losses):
        for pair in budget.runnable_pairs(s):
            policy = [*state[:s], pair, *state[s + 1 :]]
            if pair not in measured and pair != state[s] and budget.fits(policy):
                unmeasured.append(policy)
    return sorted(found, key=rank) + sorted(unmeasured, key=budget.total, reverse=True)


class Greedy(Searcher):
    """AIMET-AMP-style sensitivity measurement, greedy Pareto walk into the budget, then local refinement."""

    def __init__(self, **kwargs: Any) -> None:
        options = parse_options("greedy", kwargs, GreedyOptions)
        self.sensitivity_share = options.sensitivity_share
        self.pareto_points = options.pareto_points
        self.refine = options.refine

    def search(self, context: SearchContext) -> None:
        if context.done:
            return
        budget = context.problem.budget
        losses = self.sensitivities(context)
        path = pareto_walk(budget, losses)
        best, best_proxy = self.score_walk(context, path)
        if self.refine:
            self.refine_from(context, losses, best, best_proxy)

    def sensitivities(self, context: SearchContext) -> Losses:
        """Phase 1: measured proxy loss of each (layer, pair), within ``sensitivity_share`` of the evaluations."""
        budget = context.problem.budget
        top = budget.top_choice()
        losses: Losses = [{top: 0.0} for _ in budget.names]
        allowed = math.floor(self.sensitivity_share * context.remaining)
        if allowed < 2:
            return losses
        plan = measurement_plan(budget, allowed - 1)
        reference = [top] * len(budget.names)
        top_proxy = context.score(reference).proxy
        probes = [(s, pair) for s, pairs in enumerate(plan) for pair in pairs]
        policies = []
        for s, pair in probes:
            policy = list(reference)
            policy[s] = pair
            policies.append(policy)
        for (s, pair), episode in zip(probes, context.score_many(policies), strict=True):
            losses[s][pair] = top_proxy - episode.proxy
        return losses

    def score_walk(self, context: SearchContext, path: list[list[Choice]]) -> tuple[list[Choice], float]:
        """Phase 2: score up to ``pareto_points`` points of the walk, the final one always; return the final."""
        if context.done:
            return path[-1], -math.inf
        inner = path[1:-1]
        count = max(min(self.pareto_points - 1, context.remaining - 1, len(inner)), 0)
        picks = sorted(set(np.linspace(0, len(inner) - 1, count).round().astype(int).tolist())) if count else []
        episodes = context.score_many([inner[i] for i in picks] + [path[-1]])
        return path[-1], episodes[-1].proxy

    def refine_from(self, context: SearchContext, losses: Losses, best: list[Choice], best_proxy: float) -> None:
        """Phase 3: first-improvement local search over in-budget neighbours, most promising first."""
        budget = context.problem.budget
        seen = {tuple(best)}
        while not context.done:
            candidates = [p for p in neighbours(budget, losses, best) if tuple(p) not in seen]
            if not candidates:
                return
            improved = False
            for start in range(0, len(candidates), max(context.n_envs, 1)):
                batch = candidates[start : start + max(context.n_envs, 1)]
                for policy, episode in zip(batch, context.score_many(batch), strict=False):
                    seen.add(tuple(policy))
                    if episode.within_budget and episode.proxy > best_proxy:
                        best, best_proxy, improved = policy, episode.proxy, True
                if improved or context.done:
                    break
            if not improved:
                return
