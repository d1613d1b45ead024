"""Joining a Ray cluster: the optional ``ray`` extra, a local cluster started for the run, or an existing one.

``parallel.address: null`` starts a local cluster with the CPUs the run asks for (Ray has no local mode any more),
its workers at the driver's priority (Ray lowers them to nice 15 by default, which on a machine shared with other
jobs leaves evaluations waiting behind everyone else's work). ``auto`` joins the cluster ``ray start --head``
started on this machine, ``host:port`` the one at that address. A process that already joined a cluster (e.g. a
test that called ``ray.init``) keeps it.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from mpq_rl.errors import UserError


def import_ray() -> ModuleType:
    """The ``ray`` module, or a :class:`UserError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UserError(
            "parallel.backend ray needs Ray, which is not installed: pip install -e '.[ray]' "
            "(or use parallel.backend: process)"
        ) from None
    return ray


def connect(address: str | None, cpus: int) -> bool:
    """Join the cluster at ``address``, or start a local one with ``cpus`` CPUs when it is None; True if this
    call started or joined it (and :func:`disconnect` should leave it), False if the process was already in one."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    options: dict[str, Any] = {"address": address}
    if address is None:
        options = {"num_cpus": cpus, "include_dashboard": False, "_system_config": {"worker_niceness": 0}}
    try:
        ray.init(**options, log_to_driver=False, configure_logging=False)
    except ConnectionError as exc:
        raise UserError(
            f"cannot join the Ray cluster at parallel.address {address!r} ({exc}): start one with "
            "`ray start --head`, or leave parallel.address null for a local cluster"
        ) from None
    return True


def disconnect(started: bool) -> None:
    """Leave the cluster if :func:`connect` joined it (a local cluster it started stops)."""
    if started:
        import_ray().shutdown()
