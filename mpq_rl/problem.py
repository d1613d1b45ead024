"""The search problem: one workload, its cost table, its budget, its evaluator and its reward, in one object.

Every searcher, the RL environment included, turns a list of bit choices (one per searched layer) into an
episode through :meth:`SearchProblem.score`, so all of them are judged by the same evaluator, cache, budget and
reward, and results are comparable at equal numbers of evaluations.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mpq_rl.budget import Budget, Choice, within_fraction
from mpq_rl.config import METRICS, RunConfig, load_config
from mpq_rl.evaluator import Evaluator
from mpq_rl.hardware import CostTable, build_cost_table
from mpq_rl.policy import Policy
from mpq_rl.rewards import Outcome, build_reward, proxy_value
from mpq_rl.workload import Workload, load_workload

Episode = dict[str, Any]
"""What scoring a policy gives: ``reward`` plus the keys listed in :meth:`SearchProblem.score`."""
PENALTY_PER_EXCESS = 10.0
"""Reward lost per unit of relative budget excess under ``penalty`` enforcement."""


class SearchProblem:
    """Workload, costs, budget, evaluator and reward of one run; built from a config or from pieces in hand.

    With both a workload and a config, the workload decides which layers are searched and the config everything
    else (bit candidates, budget, hardware metric, proxy, reward).
    """

    def __init__(
        self,
        config: str | Path | dict[str, Any] | RunConfig | None = None,
        *,
        workload: Workload | None = None,
        costs: CostTable | None = None,
        evaluator: Evaluator | None = None,
    ) -> None:
        self.config = workload.config if workload is not None and config is None else load_config(config)
        self.workload = workload if workload is not None else load_workload(self.config)
        if self.workload.layers.coverage < 1.0:
            print(f"warning: the search leaves weights out; {self.workload.layers.coverage_line()}", file=sys.stderr)
        self.costs = (
            costs
            if costs is not None
            else build_cost_table(
                self.workload.layers, self.config.hardware, reference_bits=self.config.quantization.reference_bits
            )
        )
        self.owns_evaluator = evaluator is None
        self.evaluator = evaluator if evaluator is not None else Evaluator(self.workload)
        self.reward_fn: Callable[[Outcome], float] = build_reward(self.config.reward)
        self.metric = self.config.hardware.metric
        self.enforcement = self.config.budget.enforcement
        quant = self.config.quantization
        self.budget = Budget.from_costs(
            metric_table=self.costs.metric(self.metric),
            table_bits=self.costs.bits,
            layer_names=self.costs.layer_names,
            searched=self.workload.searched,
            fixed=self.workload.fixed,
            weight_bits=quant.weight_bits,
            activation_bits=quant.activation_candidates,
            fraction=self.config.budget.fraction,
            metric=self.metric,
            reference=self.costs.reference(self.metric),
        )
        self.budget.check_feasible()
        self.proxy_fp32 = proxy_value(self.evaluator.fp32, self.config.proxy)
        self._defined = tuple(m for m in METRICS if self.costs.defines(m))
        self._tables = {m: self.costs.metric(m).tolist() for m in self._defined}
        self._references = {m: self.costs.reference(m) for m in self._defined}
        self.evaluation_seconds = 0.0
        """Wall time spent in the evaluator (evaluations and cache lookups) by :meth:`score` in this process."""

    @property
    def searched(self) -> tuple[str, ...]:
        return self.workload.searched

    def policy(self, choices: Sequence[Choice]) -> Policy:
        """The full policy (every layer) for one choice per searched layer."""
        searched = {name: self.budget.bits(c) for name, c in zip(self.searched, choices, strict=True)}
        return self.workload.full_policy(searched)

    def score(self, choices: Sequence[Choice], projected_layers: int = 0) -> Episode:
        """Evaluate and cost the policy of ``choices``, applying ``wall`` enforcement if configured.

        Returns ``reward``, ``policy`` (layer -> [w_bits, a_bits], every layer), ``metrics`` (proxy metrics on
        the calibration split), ``proxy`` and ``proxy_fp32``, ``cost`` and ``cost_ratio`` (latency, energy, size,
        bops; absolute and as fractions of W8A8), ``within_budget``, ``projected`` and ``projected_layers``.
        """
        choices = list(choices)
        if self.enforcement == "wall":
            lowered = self.budget.lower_to_fit(choices)
            projected_layers = sum(a != b for a, b in zip(lowered, choices, strict=True))
            choices = lowered
        policy = self.policy(choices)
        started = time.perf_counter()
        metrics = self.evaluator.evaluate(policy)
        self.evaluation_seconds += time.perf_counter() - started
        totals, ratios = self._totals_and_ratios(policy)
        within = within_fraction(ratios[self.metric], self.budget.fraction)
        proxy = proxy_value(metrics, self.config.proxy)
        reward = float(self.reward_fn(Outcome(proxy, self.proxy_fp32, ratios[self.metric], self.budget.fraction)))
        if self.enforcement == "penalty" and not within:
            reward -= PENALTY_PER_EXCESS * (ratios[self.metric] / self.budget.fraction - 1.0)
        return {
            "reward": reward,
            "policy": {name: [int(w), int(a)] for name, (w, a) in policy.items()},
            "metrics": metrics,
            "proxy": proxy,
            "proxy_fp32": self.proxy_fp32,
            "cost": totals,
            "cost_ratio": ratios,
            "within_budget": bool(within),
            "projected": projected_layers > 0,
            "projected_layers": int(projected_layers),
        }

    def _totals_and_ratios(self, policy: Policy) -> tuple[dict[str, float], dict[str, float]]:
        """``costs.totals(policy)`` and ``costs.ratios(policy)``: the same numbers (both are exactly rounded sums),
        from plain lists looked up once per layer and references computed once per problem. An episode calls this
        once; NumPy calls here cost more than the lookups they replace."""
        bit_index = self.costs.bit_index
        positions = [(bit_index(w), bit_index(a)) for w, a in (policy[name] for name in self.costs.layer_names)]
        totals, ratios = {}, {}
        for m in METRICS:
            table = self._tables.get(m)
            if table is None:
                totals[m] = ratios[m] = math.nan
                continue
            total = math.fsum(table[i][w][a] for i, (w, a) in enumerate(positions))
            if not math.isfinite(total):
                self.costs.per_layer(policy, m)  # raises the table's explanation of the missing value
            totals[m], ratios[m] = total, total / self._references[m]
        return totals, ratios

    def close(self) -> None:
        """Give the model back in FP32 if this problem built its evaluator."""
        if self.owns_evaluator:
            self.evaluator.close()
