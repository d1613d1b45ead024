"""The evaluation pool: the one place a search scores policies in parallel.

A searcher asks its :class:`~mpq_rl.search.searcher.SearchContext` to score a batch of policies; the context's pool
first evaluates, in parallel, the policies its evaluator cache does not hold yet, and merges their metrics into
that cache (:meth:`EvaluationCache.merge`, the one merge path); the context then scores the batch in order from
the cache, so every searcher, the RL agents included, records exactly what a serial run records.

The run's ``parallel`` section (:class:`~mpq_rl.search.settings.ParallelConfig`, resolved by
:func:`resolve_parallel`) picks the :class:`Backend`: ``local`` (none: the context scores one policy at a time),
``process`` (:class:`Processes`, spawned worker processes) or ``ray``
(:class:`~mpq_rl.search.ray_backend.RayActors`, actors on a Ray cluster). Every worker builds the driver's problem
from its picklable :class:`~mpq_rl.search.problem.ProblemSpec`; the driver alone keeps the evaluation cache and
sends out only policies it has not scored.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Sequence
from typing import Protocol

from mpq_rl.errors import UserError
from mpq_rl.quantization.policy import Policy
from mpq_rl.search.evaluator import Evaluator, Metrics, policy_key
from mpq_rl.search.problem import ProblemSpec, SearchProblem
from mpq_rl.search.settings import ParallelConfig
from mpq_rl.search.threads import set_torch_threads, threads_per_process, usable_cores

SERIAL = ParallelConfig(backend="local", workers=1)
"""One evaluation at a time, in the search's process."""


class Backend(Protocol):
    """Runs evaluations: the metrics of each policy, in the order given; the same policy always gives the same
    metrics (a worker builds the driver's problem from its spec)."""

    def evaluate(self, policies: Sequence[Policy]) -> list[Metrics]: ...

    def close(self) -> None: ...


def resolve_parallel(parallel: ParallelConfig, n_envs: int) -> ParallelConfig:
    """``parallel`` with its backend and workers filled in for a run with ``agent.n_envs = n_envs``; left out,
    workers default to the cores this process may use on this machine."""
    backend = parallel.backend or ("process" if n_envs > 1 or (parallel.workers or 1) > 1 else "local")
    if backend == "local":
        return parallel.model_copy(update={"backend": backend, "workers": 1})
    workers = parallel.workers or (n_envs if n_envs > 1 else usable_cores())
    return parallel.model_copy(update={"backend": backend, "workers": workers})


def local_processes(parallel: ParallelConfig) -> int:
    """The processes of a search that compute at once on this machine: the driver, and its workers unless they
    run on a cluster the search joined."""
    if parallel.backend == "process" or (parallel.backend == "ray" and parallel.address is None):
        return 1 + (parallel.workers or 1)
    return 1


_WORKER_EVALUATOR: Evaluator | None = None


def _start_worker(spec: ProblemSpec, threads: int) -> None:
    global _WORKER_EVALUATOR
    set_torch_threads(threads)
    _WORKER_EVALUATOR = spec.build().evaluator


def _evaluate_in_worker(policy: Policy) -> Metrics:
    if _WORKER_EVALUATOR is None:
        raise RuntimeError("evaluation worker used before it was started")
    return _WORKER_EVALUATOR.measure(policy)


class Processes:
    """Evaluations in ``workers`` spawned processes, started on first use; each builds the problem from ``spec``
    and runs ``threads`` torch threads."""

    def __init__(self, spec: ProblemSpec, workers: int, threads: int = 1) -> None:
        self.spec, self.workers, self.threads = spec, workers, threads
        self._pool = None

    def evaluate(self, policies: Sequence[Policy]) -> list[Metrics]:
        if self._pool is None:
            context = multiprocessing.get_context("spawn")
            self._pool = context.Pool(self.workers, initializer=_start_worker, initargs=(self.spec, self.threads))
        return self._pool.map(_evaluate_in_worker, list(policies), chunksize=1)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool.join()
            self._pool = None


def build_backend(parallel: ParallelConfig, spec: ProblemSpec | None) -> Backend | None:
    """The backend a resolved ``parallel`` section asks for (None for ``local``); nothing starts before its first
    batch, but a missing Ray is reported here, before the run writes anything."""
    if parallel.backend == "local" or parallel.backend is None:
        return None
    if spec is None:
        raise UserError(
            f"parallel.backend {parallel.backend} needs a problem built from a config (build_problem(config)): "
            "its workers build their own copy of it"
        )
    workers = parallel.workers or 1
    threads = threads_per_process(local_processes(parallel))
    if parallel.backend == "process":
        return Processes(spec, workers, threads)
    from mpq_rl.search.ray_backend import RayActors

    return RayActors(spec, workers, address=parallel.address, threads=threads if parallel.address is None else 1)


class EvaluationPool:
    """The search's evaluations beyond one at a time: fills the evaluator cache with a batch's new policies.

    ``parallel`` is a resolved section (:func:`resolve_parallel`)."""

    def __init__(self, problem: SearchProblem, parallel: ParallelConfig = SERIAL) -> None:
        self.problem = problem
        self.workers = parallel.workers or 1
        self.backend = build_backend(parallel, problem.spec)

    def prefetch(self, policies: Sequence[Policy]) -> None:
        """Evaluate, through the backend, the policies of a batch that the cache does not hold yet (each once), and
        merge their metrics into the cache; a batch with one new policy is left to the caller's ordinary scoring."""
        if self.backend is None:
            return
        cache, names = self.problem.evaluator.cache, self.problem.evaluator.names
        fresh: dict[str, Policy] = {}
        for policy in policies:
            key = policy_key(policy, names)
            if key not in cache and key not in fresh:
                fresh[key] = policy
        if len(fresh) > 1:
            cache.merge(dict(zip(fresh, self.backend.evaluate(list(fresh.values())), strict=True)))

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()
