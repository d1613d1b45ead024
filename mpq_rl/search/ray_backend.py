"""Evaluations on a Ray cluster: one actor per worker, each holding a replica of the driver's problem.

Each :class:`EvaluationActor` builds the problem from the run's :class:`~mpq_rl.search.problem.ProblemSpec` (model,
calibration data, its own cache of quantized tensors) and measures policies; the driver keeps the evaluation cache
and sends only policies it has not scored (see :mod:`mpq_rl.search.pool`). An actor that dies (its node lost, or
``ray.kill``) is replaced by a fresh one and the evaluation it held is sent again, so every policy of a batch is
measured and returned exactly once, in order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from mpq_rl.errors import UserError
from mpq_rl.quantization.policy import Policy
from mpq_rl.search.evaluator import Metrics
from mpq_rl.search.problem import ProblemSpec
from mpq_rl.search.ray_cluster import connect, disconnect, import_ray


class EvaluationActor:
    """A Ray actor's state: the problem built from ``spec`` with ``threads`` torch threads."""

    def __init__(self, spec: ProblemSpec, threads: int) -> None:
        from mpq_rl.search.threads import set_torch_threads

        set_torch_threads(threads)
        self.evaluator = spec.build().evaluator

    def measure(self, policy: Policy) -> Metrics:
        return self.evaluator.measure(policy)


class RayActors:
    """Evaluations on ``workers`` Ray actors (one CPU each), on the cluster at ``address`` (None: a local one
    with ``workers`` CPUs, started on first use and stopped by :meth:`close`)."""

    def __init__(self, spec: ProblemSpec, workers: int, address: str | None = None, threads: int = 1) -> None:
        self.ray = import_ray()
        self.spec, self.workers, self.address, self.threads = spec, workers, address, threads
        self.actors: list[Any] = []
        self.replaced = 0
        """Actors that died and were replaced."""
        self.dispatched = 0
        """Evaluations sent to actors, retries included."""
        self._started = False
        self._actor_class: Any = None

    def _spawn(self) -> Any:
        return self._actor_class.remote(self.spec, self.threads)

    def _start(self) -> None:
        self._started = connect(self.address, self.workers)
        self._actor_class = self.ray.remote(num_cpus=1, max_restarts=0)(EvaluationActor)
        self.actors = [self._spawn() for _ in range(self.workers)]

    def evaluate(self, policies: Sequence[Policy]) -> list[Metrics]:
        """The metrics of ``policies``, in order: each idle actor takes the next policy; a policy whose actor died
        goes back to the queue, and the actor is replaced."""
        if not self.actors:
            self._start()
        ray = self.ray
        results: list[Metrics | None] = [None] * len(policies)
        queue = list(range(len(policies)))[::-1]
        idle = list(range(len(self.actors)))[::-1]
        running: dict[Any, tuple[int, int]] = {}  # Ray object ref -> (policy index, actor slot)
        while queue or running:
            while queue and idle:
                index, slot = queue.pop(), idle.pop()
                running[self.actors[slot].measure.remote(policies[index])] = (index, slot)
                self.dispatched += 1
            done, _ = ray.wait(list(running), num_returns=1)
            index, slot = running.pop(done[0])
            try:
                results[index] = ray.get(done[0])
            except ray.exceptions.RayActorError as exc:
                if exc.actor_init_failed:
                    raise UserError(
                        "a Ray worker could not build the problem (every node needs the config's model and data "
                        f"files at the same paths): {str(exc).splitlines()[0]}"
                    ) from None
                ray.kill(self.actors[slot])
                self.actors[slot] = self._spawn()
                self.replaced += 1
                queue.append(index)
            idle.append(slot)
        return cast(list[Metrics], results)

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []
        disconnect(self._started)
        self._started = False
