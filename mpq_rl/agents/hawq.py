"""HAWQ-V2/V3 (Dong, Yao et al. 2020/2021): Hessian-trace sensitivity and an integer linear program.

Each searched layer's sensitivity to a bit pair is the second-order estimate of the calibration loss increase
(HAWQ-V2, eq. 4; HAWQ-V3, eq. 9)::

    Omega(w, a) = 1/2 * ( Tr(H_W) / n_W * ||Q_w(W) - W||^2  +  Tr(H_x) / n_x * ||Q_a(x) - x||^2 )

with the traces estimated by Hutchinson's method (:mod:`mpq_rl.agents.hessian`) on the FP32 model over the
calibration data only, ``Q_w`` the simulator's cached quantized weights and ``Q_a`` its calibrated input
quantizer applied to the layer's FP32 inputs on the calibration data (HAWQ-V2's activation extension: the
Hessian with respect to the layer's input, rather than a measured output error, so that estimating costs no
evaluations). The loss is cross-entropy on labels for a top-1 proxy, KL divergence from the FP32 outputs for
fidelity on logits (agreement, kl) and squared error to them otherwise (cosine). Traces are clamped at zero: a
negative estimate (a layer at a saddle, or noise) would otherwise reward quantization error.

The sensitivities are minimized summed over layers, one pair per layer, under the budget: an integer linear
program (a multiple-choice knapsack), solved exactly by :func:`ranked_policies`, a best-first search that lists
its solutions in order of objective. Computing the sensitivities scores no policy and so costs no evaluations;
the ILP optimum is the first episode. The remaining evaluations (or ``alternatives`` of them) score the next-best
ILP solutions, the next one from the same search (a few heap operations per layer, where re-solving the ILP with
a no-good cut per solution found took longer than the evaluations), so the measured proxy can overrule the
second-order model where it is wrong. HAWQ-V3 sweeps budget-tightened variants instead; those are cheaper policies
of the same model, which rarely score better than the optimum at the budget. Nothing is printed.

``agent.kwargs``: ``samples`` (32), Rademacher vectors per trace; ``alternatives`` (null: until the evaluation
budget is spent), how many next-best solutions to score.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from mpq_rl.agents.base import SearchContext, Searcher, check_options
from mpq_rl.agents.hessian import calibration_loss, hessian_traces
from mpq_rl.errors import UserError
from mpq_rl.quantization.quant import is_float_bits
from mpq_rl.search.budget import Choice
from mpq_rl.search.metrics import model_outputs
from mpq_rl.search.problem import SearchProblem

DEFAULTS = {"samples": 32, "alternatives": None}
ILP_MARGIN = 1e-6
"""Relative tightening of the ILP's budget row (in units of the reference cost), so that the costs summed in
another order can never leave a solution over the budget's own check."""


def loss_kind(problem: SearchProblem) -> str:
    """The calibration loss whose curvature matches the configured proxy."""
    proxy = problem.proxy
    if proxy.metric == "top1":
        return "cross_entropy"
    # logits of classes ([samples, classes]) or of next tokens ([sequences, positions, vocabulary])
    logits = problem.evaluator.reference.dim() in (2, 3)
    return "kl" if proxy.fidelity != "cosine" and logits else "mse"


@torch.no_grad()
def input_perturbations(problem: SearchProblem) -> np.ndarray:
    """``||Q_a(x) - x||^2`` of each searched layer's FP32 input over the calibration data: [layer, a candidate]."""
    simulator = problem.evaluator.simulator
    bits = problem.budget.activation_bits
    errors = np.zeros((len(problem.searched), len(bits)))
    row = {name: s for s, name in enumerate(problem.searched)}

    def make_hook(name: str):
        def hook(module: torch.nn.Module, args: tuple) -> None:
            x = args[0].float()
            for i, b in enumerate(bits):
                quantizer = simulator.activation(name, b)
                if quantizer is not None:
                    errors[row[name], i] += float((quantizer(x) - x).pow(2).sum())

        return hook

    handles = [simulator.modules[n].register_forward_pre_hook(make_hook(n)) for n in problem.searched]
    try:
        simulator.restore()
        model_outputs(problem.workload.model, problem.evaluator.calibration)
    finally:
        for handle in handles:
            handle.remove()
    return errors


def sensitivities(problem: SearchProblem, samples: int = 32, seed: int = 0) -> np.ndarray:
    """HAWQ's ``Omega`` of every searched layer and candidate pair: [layer, w candidate, a candidate].

    Leaves the model in FP32 (the simulator restored); the evaluator re-applies whatever policy it scores next.
    """
    evaluator = problem.evaluator
    simulator = evaluator.simulator
    simulator.restore()
    loss = calibration_loss(loss_kind(problem), evaluator.reference, evaluator.calibration)
    modules = {name: simulator.modules[name] for name in problem.searched}
    traces = hessian_traces(problem.workload.model, modules, evaluator.calibration, loss, samples, seed)
    budget = problem.budget
    weight_error = np.array(
        [
            [
                0.0 if is_float_bits(b) else float((simulator.weight(n, b) - simulator.fp32_weights[n]).pow(2).sum())
                for b in budget.weight_bits
            ]
            for n in problem.searched
        ]
    )
    input_error = input_perturbations(problem)
    weight_scale = np.array([max(traces.weight[n], 0.0) / traces.weight_elements[n] for n in problem.searched])
    input_scale = np.array([max(traces.activation[n], 0.0) / traces.activation_elements[n] for n in problem.searched])
    return 0.5 * ((weight_scale[:, None] * weight_error)[:, :, None] + (input_scale[:, None] * input_error)[:, None, :])


def _lower_hull(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The lower-left convex hull of (cost, objective) points, from the cheapest (least objective among ties) to
    the least objective (cheapest among ties): costs rise, objectives fall, and the slopes rise towards zero."""
    hull: list[tuple[float, float]] = []
    for c, v in sorted(points):
        if hull and v >= hull[-1][1]:
            continue  # costs more and is no better
        while len(hull) >= 2 and (hull[-1][1] - hull[-2][1]) * (c - hull[-2][0]) >= (v - hull[-2][1]) * (
            hull[-1][0] - hull[-2][0]
        ):
            hull.pop()
        hull.append((c, v))
    return hull


class _RelaxationBound:
    """Lower bounds on the objective of layers ``k, k+1, ...`` within a cost: the LP relaxation of the
    multiple-choice knapsack (Sinha and Zoltners, Operations Research 27(3), 1979). Every layer starts at its
    cheapest choice; then the segments of the layers' lower convex hulls are bought in order of objective saved
    per unit of cost, the last one in part. The segments of every suffix of layers are sorted once, so a bound is
    one binary search."""

    def __init__(self, options: list[list[tuple[float, float, Choice]]]) -> None:
        layers = len(options)
        self.base_cost = [0.0] * (layers + 1)
        self.base_value = [0.0] * (layers + 1)
        self.spent: list[np.ndarray] = [np.zeros(0)] * (layers + 1)
        self.saved: list[np.ndarray] = [np.zeros(0)] * (layers + 1)
        segments = np.zeros((0, 3))  # slope, cost, objective change
        for k in range(layers - 1, -1, -1):
            hull = np.array(_lower_hull([(c, v) for c, v, _ in options[k]]))
            self.base_cost[k] = self.base_cost[k + 1] + hull[0, 0]
            self.base_value[k] = self.base_value[k + 1] + hull[0, 1]
            steps = np.diff(hull, axis=0)
            segments = np.concatenate([segments, np.column_stack([steps[:, 1] / steps[:, 0], steps])])
            segments = segments[np.argsort(segments[:, 0], kind="stable")]
            self.spent[k] = np.cumsum(segments[:, 1])
            self.saved[k] = np.cumsum(segments[:, 2])

    def __call__(self, k: int, left: float) -> float | None:
        """The bound for layers ``k, ...`` within ``left`` (None if even their cheapest choices exceed it)."""
        extra = left - self.base_cost[k]
        if extra < 0.0:
            return None
        spent, saved = self.spent[k], self.saved[k]
        i = int(np.searchsorted(spent, extra, side="right"))
        value = self.base_value[k] + (float(saved[i - 1]) if i else 0.0)
        if i < len(spent):
            before, gained = (float(spent[i - 1]), float(saved[i - 1])) if i else (0.0, 0.0)
            value += (float(saved[i]) - gained) * (extra - before) / (float(spent[i]) - before)
        return value


def ranked_policies(objective: np.ndarray, costs: np.ndarray, capacity: float) -> Iterator[list[Choice]]:
    """Every choice per layer with ``sum costs[s, w, a] <= capacity``, in increasing order of
    ``sum objective[s, w, a]``: the ILP's optimum first, then its next-best solutions, lazily.

    ``objective`` and ``costs`` are [layer, w, a]; NaN costs mark pairs that cannot be chosen; of policies with
    equal objective, the costlier comes first. A best-first
    (A*) search over the layers in order: a partial policy's key is its objective so far plus a lower bound on
    the rest (:class:`_RelaxationBound`, the LP relaxation within the capacity left). A complete policy is popped
    only when no partial one could complete below it, so policies come out exactly in order.
    """
    layers = costs.shape[0]
    options: list[list[tuple[float, float, Choice]]] = [[] for _ in range(layers)]
    for s, w, a in np.argwhere(~np.isnan(costs)).tolist():
        options[s].append((float(costs[s, w, a]), float(objective[s, w, a]), (w, a)))
    if any(not layer for layer in options):
        return
    relaxation = _RelaxationBound(options)
    # Rounding in the bounds' sums must not let a bound exceed what a completion actually reaches.
    slack = 1e-9 * sum(max(abs(v) for _, v, _ in layer) for layer in options) + 1e-300

    def bound(k: int, left: float) -> float | None:
        value = relaxation(k, left)
        return None if value is None else value - slack

    root = bound(0, capacity)
    if root is None:
        return
    order = itertools.count()
    # (key, minus the cost spent, arrival, depth, cost spent, objective, choices): among policies of equal
    # objective the costlier comes first (the second-order model cannot tell them apart; more bits is the safer
    # guess), then the one found first.
    heap: list[tuple[float, float, int, int, float, float, tuple[Choice, ...]]] = [
        (root, 0.0, next(order), 0, 0.0, 0.0, ())
    ]
    while heap:
        _, _, _, depth, spent, value, chosen = heapq.heappop(heap)
        if depth == layers:
            yield list(chosen)
            continue
        for cost, v, choice in options[depth]:
            rest = bound(depth + 1, capacity - spent - cost)
            if rest is None:
                continue
            total, used = value + v, spent + cost
            key = total if depth + 1 == layers else total + rest
            heapq.heappush(heap, (key, -used, next(order), depth + 1, used, total, (*chosen, choice)))


class Hawq(Searcher):
    """Hessian-trace sensitivities, an exact ILP under the budget, then the next-best ILP solutions."""

    def __init__(self, **kwargs: Any) -> None:
        options = check_options("hawq", kwargs, DEFAULTS)
        self.samples = int(options["samples"])
        self.alternatives = options["alternatives"]
        if self.samples < 1:
            raise UserError(f"agent.kwargs.samples must be at least 1, got {self.samples}")
        if self.alternatives is not None and int(self.alternatives) < 0:
            raise UserError(f"agent.kwargs.alternatives must be null or at least 0, got {self.alternatives}")

    def search(self, context: SearchContext) -> None:
        if context.done:
            return
        problem = context.problem
        budget = problem.budget
        omega = sensitivities(problem, self.samples, context.seed)
        capacity = (budget.limit - budget.fixed_cost) - ILP_MARGIN * budget.reference
        extra = context.remaining - 1 if self.alternatives is None else int(self.alternatives)
        ranked = ranked_policies(omega, budget.costs, capacity)
        # None only when the budget is within the margin of the cheapest policy
        first = next(ranked, None) or budget.projected([budget.top_choice()] * len(omega))
        context.score(first)
        found = 1
        while not context.done and found <= extra:
            count = min(max(context.n_envs, 1), extra + 1 - found, context.remaining)
            batch = list(itertools.islice(ranked, count))
            if not batch:
                return
            found += len(batch)
            context.score_many(batch)
