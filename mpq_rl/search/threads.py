"""How many torch threads each process of a run uses: the one place they are decided.

Evaluations are small forward passes; two processes each running as many threads as the machine has cores fight
over them (building a problem on a busy two-core machine took ten times longer with two threads than with one).
So every process that computes at the same time on this machine (a search's driver and its local workers, or the
runs of a comparison) gets an equal share of the cores this process may use. ``OMP_NUM_THREADS``, when set, is the
user's own choice and wins.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

THREADS_ENV = "OMP_NUM_THREADS"


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. under ``taskset`` or a container's cpuset)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def threads_per_process(processes: int) -> int:
    """Torch threads for each of ``processes`` processes computing at once on this machine (at least one)."""
    given = os.environ.get(THREADS_ENV, "").strip()
    if given.isdigit() and int(given) > 0:
        return int(given)
    return max(1, usable_cores() // max(processes, 1))


def set_torch_threads(threads: int) -> int:
    """Set this process's torch threads (intra-op); returns ``threads``."""
    import torch

    torch.set_num_threads(threads)
    return threads


@contextmanager
def one_thread() -> Iterator[None]:
    """Torch on one thread inside the block, restored after: small MLPs (the searchers' networks) train fastest on
    one thread, and two threads spinning on a busy 2-core machine are ~20x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
