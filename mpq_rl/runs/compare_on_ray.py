"""A comparison's runs on a Ray cluster: each (searcher, seed) run is an independent Ray task.

A task runs an ordinary :func:`~mpq_rl.runs.trainer.run_search` (a job the comparison hands over) on one CPU of
the cluster, evaluating in its own process (``parallel.backend: local`` inside it) and writing its own run folder,
so the folders and results are those of a serial comparison. On a cluster of several machines, the config's files
and ``--output`` must be at the same (absolute) paths on every node, e.g. a shared filesystem. A task that fails is
not retried: the next ``mpq-rl compare`` resumes it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from mpq_rl.errors import UserError
from mpq_rl.search.ray_cluster import connect, disconnect, import_ray
from mpq_rl.search.settings import ParallelConfig
from mpq_rl.search.threads import set_torch_threads, threads_per_process


def _run(job: Callable[[], Any], threads: int) -> Any:
    set_torch_threads(threads)
    return job()


def run_on_ray(
    pending: list[tuple[int, Callable[[], Any]]], parallel: ParallelConfig, progress: bool
) -> dict[int, Any]:
    """Run each ``(index, job)`` of ``pending`` (a picklable call, e.g. one run's search) as a Ray task on the
    cluster of ``parallel`` (a local one with ``parallel.workers`` CPUs when its address is null); their results by
    index."""
    ray = import_ray()
    if not pending:
        return {}
    workers = parallel.workers or 1
    threads = threads_per_process(workers) if parallel.address is None else 1
    task = ray.remote(num_cpus=1, max_retries=0)(_run)
    started = connect(parallel.address, workers)
    try:  # from here on, every way out leaves the cluster (a local one stops)
        refs = {task.remote(job, threads): index for index, job in pending}
        if progress:
            print(f"mpq-rl: {len(refs)} runs on the Ray cluster", file=sys.stderr, flush=True)
        results: dict[int, Any] = {}
        while refs:
            (done,), _ = ray.wait(list(refs), num_returns=1)
            index = refs.pop(done)
            try:
                results[index] = ray.get(done)
            except ray.exceptions.RayTaskError as exc:
                if isinstance(exc.cause, UserError):
                    raise exc.cause from None
                raise
            if progress:
                print(f"mpq-rl: {len(results)} of {len(pending)} runs finished", file=sys.stderr, flush=True)
        return results
    finally:
        disconnect(started)
