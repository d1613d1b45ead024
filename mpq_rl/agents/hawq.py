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

import itertools
from typing import Any

import numpy as np
import torch
from pydantic import Field

from mpq_rl.agents.hessian import calibration_loss, hessian_traces
from mpq_rl.agents.knapsack import ranked_policies
from mpq_rl.quantization.quant import is_float_bits
from mpq_rl.search.problem import SearchProblem
from mpq_rl.search.searcher import SearchContext, Searcher, SearcherOptions, parse_options
from mpq_rl.workloads.model_io import model_outputs


class HawqOptions(SearcherOptions):
    samples: int = Field(32, ge=1)
    alternatives: int | None = Field(None, ge=0)


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
    bits = problem.budget.activation_codes
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
                for b in budget.weight_codes
            ]
            for n in problem.searched
        ]
    )
    input_error = input_perturbations(problem)
    weight_scale = np.array([max(traces.weight[n], 0.0) / traces.weight_elements[n] for n in problem.searched])
    input_scale = np.array([max(traces.activation[n], 0.0) / traces.activation_elements[n] for n in problem.searched])
    return 0.5 * ((weight_scale[:, None] * weight_error)[:, :, None] + (input_scale[:, None] * input_error)[:, None, :])


class Hawq(Searcher):
    """Hessian-trace sensitivities, an exact ILP under the budget, then the next-best ILP solutions."""

    def __init__(self, **kwargs: Any) -> None:
        options = parse_options("hawq", kwargs, HawqOptions)
        self.samples = options.samples
        self.alternatives = options.alternatives

    def search(self, context: SearchContext) -> None:
        if context.done:
            return
        problem = context.problem
        budget = problem.budget
        omega = sensitivities(problem, self.samples, context.seed)
        capacity = (budget.limit - budget.fixed_cost) - ILP_MARGIN * budget.reference
        extra = context.remaining - 1 if self.alternatives is None else int(self.alternatives)
        notes: dict[str, Any] = {}
        ranked = ranked_policies(omega, budget.costs, capacity, limit=extra + 1, notes=notes)
        try:
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
        finally:
            context.report.hawq_ranking = notes.get("hawq_ranking")
