"""The search problem: one workload, its cost table, its budget, its evaluator and its reward, in one object.

Every searcher, the RL environment included, turns a list of bit choices (one per searched layer) into an
episode through :meth:`SearchProblem.score`, so all of them are judged by the same evaluator, cache, budget and
reward, and results are comparable at equal numbers of evaluations.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mpq_rl.hardware import CostTable, build_cost_table
from mpq_rl.hardware.settings import HardwareConfig
from mpq_rl.quantization.formats import candidate_codes
from mpq_rl.quantization.policy import Policy
from mpq_rl.quantization.settings import QuantizationConfig
from mpq_rl.search.budget import Budget, Choice
from mpq_rl.search.enforcement import ENFORCEMENTS, Enforcement
from mpq_rl.search.episode import Episode
from mpq_rl.search.evaluator import EvaluationCache, Evaluator
from mpq_rl.search.rewards import Outcome, build_reward, proxy_value
from mpq_rl.search.settings import BudgetConfig, ProxyConfig, RewardConfig
from mpq_rl.search.size_budget import SIZE_METRIC, size_fraction
from mpq_rl.workloads.workload import Workload, WorkloadSettings, load_workload


@dataclass(frozen=True)
class ProblemSettings:
    """The sections a search problem is built from (the run layer, :mod:`mpq_rl.runs.assembly`, takes them out of
    a run configuration)."""

    workload: WorkloadSettings
    hardware: HardwareConfig
    budget: BudgetConfig
    proxy: ProxyConfig
    reward: RewardConfig


@dataclass(frozen=True)
class ProblemSpec:
    """What another process needs to build the same problem as the driver: its settings (typed sections, small and
    picklable). :meth:`build` goes through :func:`build_problem`, as the driver did."""

    settings: ProblemSettings

    def build(self, cache: EvaluationCache | None = None) -> SearchProblem:
        """The problem, its evaluator starting from ``cache`` (e.g. the driver's, so no policy is scored twice)."""
        problem = build_problem(self.settings)
        if cache is not None:
            problem.evaluator.cache = cache
        return problem


def build_problem(
    settings: ProblemSettings,
    *,
    workload: Workload | None = None,
    costs: CostTable | None = None,
    evaluator: Evaluator | None = None,
) -> SearchProblem:
    """The search problem ``settings`` describe: the one place settings become a problem (the run layer's
    :func:`mpq_rl.runs.assembly.build_problem` brings the CLI, ``gym.make`` and the Python API here). Pieces already
    in hand (a workload from Python, a shared evaluator) are used as given; with a workload in hand, it decides
    which layers are searched and the settings everything else. Only a problem whose workload this function loaded
    can be rebuilt in worker processes."""
    spec = ProblemSpec(settings) if workload is None else None
    workload = workload if workload is not None else load_workload(settings.workload)
    quantization = settings.workload.quantization
    return SearchProblem(
        workload,
        costs
        if costs is not None
        else build_cost_table(
            workload.layers,
            settings.hardware,
            formats=quantization.formats,
            reference_bits=quantization.reference_bits,
            codes=quantization.weight_codes,
        ),
        evaluator,
        quantization=quantization,
        metric=settings.hardware.metric,
        budget=settings.budget,
        proxy=settings.proxy,
        reward=settings.reward,
        spec=spec,
    )


class SearchProblem:
    """Workload, costs, budget, evaluator and reward of one run, from typed pieces (see :func:`build_problem`)."""

    def __init__(
        self,
        workload: Workload,
        costs: CostTable,
        evaluator: Evaluator | None = None,
        *,
        quantization: QuantizationConfig,
        metric: str,
        budget: BudgetConfig,
        proxy: ProxyConfig,
        reward: RewardConfig,
        spec: ProblemSpec | None = None,
    ) -> None:
        self.workload = workload
        self.costs = costs
        if workload.layers.coverage < 1.0:
            print(f"warning: the search leaves weights out; {workload.layers.coverage_line()}", file=sys.stderr)
        self.owns_evaluator = evaluator is None
        self.evaluator = evaluator if evaluator is not None else Evaluator(self.workload)
        self.reward_fn: Callable[[Outcome], float] = build_reward(reward)
        self.proxy = proxy
        self.weight_only = quantization.weight_only
        self.formats = quantization.formats
        """The number formats a layer may take (:mod:`mpq_rl.quantization.formats`), in the order the action indexes
        them."""
        self.spec = spec
        """How a worker process builds this problem; None for a problem assembled from pieces in hand."""
        self.metric = SIZE_METRIC if budget.on_size else metric
        self.enforcement: Enforcement = ENFORCEMENTS[budget.enforcement]
        """The budget rule (:mod:`mpq_rl.search.enforcement`): the environment's choices and :meth:`score` follow it."""
        self.budget = Budget.from_costs(
            metric_table=self.costs.metric(self.metric),
            table_bits=self.costs.bits,
            layer_names=self.costs.layer_names,
            searched=self.workload.searched,
            fixed=self.workload.fixed,
            weight_codes=quantization.weight_codes,
            activation_codes=candidate_codes(quantization.formats, quantization.activation_candidates),
            fraction=size_fraction(budget, self.costs, workload.layers, workload.searched, workload.fixed),
            metric=self.metric,
            reference=self.costs.reference(self.metric),
            reference_bits=self.costs.reference_bits,
        )
        self.budget.check_feasible()
        self.evaluator.simulator.prepare(self.candidates())
        self.proxy_fp32 = proxy_value(self.evaluator.fp32, self.proxy)
        self.evaluation_seconds = 0.0
        """Wall time spent in the evaluator (evaluations and cache lookups) by :meth:`score` in this process."""

    @property
    def searched(self) -> tuple[str, ...]:
        return self.workload.searched

    def candidates(self) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
        """Every layer's weight and activation precision codes that a policy of this problem can give it."""
        budget = self.budget
        fixed = {name: ((w,), (a,)) for name, (w, a) in self.workload.fixed.items()}
        return {**fixed, **{name: (budget.weight_codes, budget.activation_codes) for name in self.searched}}

    def policy(self, choices: Sequence[Choice]) -> Policy:
        """The full policy (every layer) for one choice per searched layer."""
        searched = {name: self.budget.bits(c) for name, c in zip(self.searched, choices, strict=True)}
        return self.workload.full_policy(searched)

    def enforce(self, choices: Sequence[Choice], projected_layers: int = 0) -> tuple[list[Choice], int]:
        """The choices :meth:`score` evaluates, settled by the budget rule (under ``wall`` lowered to fit), and the
        number of layers the budget changed."""
        return self.enforcement.settle(self.budget, choices, projected_layers)

    def score(self, choices: Sequence[Choice], projected_layers: int = 0) -> Episode:
        """Evaluate and cost the policy of ``choices`` (every layer's bits, reward, proxy, costs: see
        :class:`~mpq_rl.search.episode.Episode`) as the budget rule settles it, its reward less the rule's penalty.
        The rule's per-layer part (projection) is the chooser's: the environment applies it, and searchers hand in
        choices they projected themselves."""
        choices, projected_layers = self.enforce(choices, projected_layers)
        policy = self.policy(choices)
        started = time.perf_counter()
        metrics = self.evaluator.evaluate(policy)
        self.evaluation_seconds += time.perf_counter() - started
        totals, ratios = self.costs.totals_and_ratios(policy)
        within = self.budget.within(ratios[self.metric])
        proxy = proxy_value(metrics, self.proxy)
        reward = float(self.reward_fn(Outcome(proxy, self.proxy_fp32, ratios[self.metric], self.budget.fraction)))
        reward -= self.enforcement.penalty(ratios[self.metric], self.budget.fraction)
        return Episode(
            reward=reward,
            policy={name: (int(w), int(a)) for name, (w, a) in policy.items()},
            metrics=metrics,
            proxy=proxy,
            proxy_fp32=self.proxy_fp32,
            cost=totals,
            cost_ratio=ratios,
            within_budget=bool(within),
            projected_layers=int(projected_layers),
        )

    def close(self) -> None:
        """Give the model back in FP32 if this problem built its evaluator."""
        if self.owns_evaluator:
            self.evaluator.close()
