"""The evaluation pool: the one place a search scores policies in parallel.

A searcher asks its :class:`~mpq_rl.agents.base.SearchContext` to score a batch of policies; the context's pool
first evaluates, in parallel, the policies its evaluator cache does not hold yet, and merges their metrics into
that cache (:meth:`EvaluationCache.merge`, the one merge path); the context then scores the batch in order from
the cache, so every searcher, the RL agents included, records exactly what a serial run records.

With ``agent.n_envs: 1`` the pool does nothing and the context scores one policy at a time. With ``agent.n_envs >
1`` the evaluations run in a :class:`Backend`: :class:`Processes`, spawned worker processes, each building the
driver's problem from its picklable :class:`~mpq_rl.problem.ProblemSpec`. Another backend (a Ray cluster, other
machines) implements the same two methods: metrics for a list of policies, in order and deterministic, and
``close``.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Sequence
from typing import Protocol

from mpq_rl.errors import UserError
from mpq_rl.evaluator import Evaluator, Metrics, policy_key
from mpq_rl.policy import Policy
from mpq_rl.problem import ProblemSpec, SearchProblem


class Backend(Protocol):
    """Runs evaluations: the metrics of each policy, in the order given; the same policy always gives the same
    metrics (a worker builds the driver's problem from its spec)."""

    def evaluate(self, policies: Sequence[Policy]) -> list[Metrics]: ...

    def close(self) -> None: ...


_WORKER_EVALUATOR: Evaluator | None = None


def _start_worker(spec: ProblemSpec) -> None:
    global _WORKER_EVALUATOR
    import torch

    torch.set_num_threads(1)
    _WORKER_EVALUATOR = spec.build().evaluator


def _evaluate_in_worker(policy: Policy) -> Metrics:
    if _WORKER_EVALUATOR is None:
        raise RuntimeError("evaluation worker used before it was started")
    return _WORKER_EVALUATOR.measure(policy)


class Processes:
    """Evaluations in ``workers`` spawned processes, started on first use; each builds the problem from ``spec``."""

    def __init__(self, spec: ProblemSpec, workers: int) -> None:
        self.spec, self.workers = spec, workers
        self._pool = None

    def evaluate(self, policies: Sequence[Policy]) -> list[Metrics]:
        if self._pool is None:
            context = multiprocessing.get_context("spawn")
            self._pool = context.Pool(self.workers, initializer=_start_worker, initargs=(self.spec,))
        return self._pool.map(_evaluate_in_worker, list(policies))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool.join()
            self._pool = None


class EvaluationPool:
    """The search's evaluations beyond one at a time: fills the evaluator cache with a batch's new policies."""

    def __init__(self, problem: SearchProblem, workers: int = 1) -> None:
        self.problem, self.workers = problem, workers
        if workers > 1 and problem.spec is None:
            raise UserError(
                "agent.n_envs > 1 needs a problem built from a config (build_problem(config)): worker processes "
                "build their own copy of it"
            )
        self.backend: Backend | None = Processes(problem.spec, workers) if problem.spec is not None else None

    def prefetch(self, policies: Sequence[Policy]) -> None:
        """Evaluate, through the backend, the policies of a batch that the cache does not hold yet (each once), and
        merge their metrics into the cache; a batch of one, or a pool of one worker, is left to the caller's
        ordinary scoring."""
        if self.backend is None or self.workers <= 1 or len(policies) <= 1:
            return
        cache, names = self.problem.evaluator.cache, self.problem.evaluator.names
        fresh: dict[str, Policy] = {}
        for policy in policies:
            key = policy_key(policy, names)
            if key not in cache and key not in fresh:
                fresh[key] = policy
        if fresh:
            cache.merge(dict(zip(fresh, self.backend.evaluate(list(fresh.values())), strict=True)))

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()
