"""The sections of a run configuration the search core reads: ``budget``, ``proxy``, ``reward`` and ``parallel``."""

from __future__ import annotations

import re
from typing import Any, Literal, get_args

from pydantic import Field, model_validator

from mpq_rl.settings import Section


class BudgetConfig(Section):
    """The cost budget as a fraction of the W8A8 cost, and how an episode is kept within it."""

    fraction: float = Field(0.5, gt=0.0, allow_inf_nan=False)
    enforcement: Literal["project", "wall", "penalty"] = "project"


class ProxyConfig(Section):
    """The proxy accuracy the search optimizes, on calibration data only."""

    metric: Literal["top1", "fidelity"] = "top1"
    fidelity: Literal["agreement", "kl", "cosine"] = "agreement"

    @property
    def key(self) -> str:
        """The name of the proxy among the evaluator's metrics (and in every report): top1, agreement, kl or
        cosine."""
        return self.metric if self.metric == "top1" else self.fidelity


class RewardConfig(Section):
    name: str = "haq"
    kwargs: dict[str, Any] = Field(default_factory=dict)


BackendName = Literal["local", "process", "ray"]
BACKENDS: tuple[str, ...] = get_args(BackendName)
_CLUSTER_ADDRESS = re.compile(r"(ray://)?[A-Za-z0-9.\-\[\]:]+:\d+")


class ParallelConfig(Section):
    """Where a search's evaluations run: ``local`` (in the search's process, one at a time), ``process`` (spawned
    worker processes on this machine) or ``ray`` (actors on a Ray cluster: a local one started for the run when
    ``address`` is null, else the cluster at ``auto`` or ``host:port``). ``workers`` evaluate at once.

    Left out (null), the backend is ``process`` with ``agent.n_envs`` workers when ``agent.n_envs > 1`` (the
    environments' episodes are evaluated in parallel, as before this section existed) and ``local`` otherwise;
    ``workers`` left out is ``agent.n_envs`` when above 1, else the cores this process may use (both resolved where
    the pool is built: :func:`mpq_rl.search.pool.resolve_parallel`)."""

    backend: BackendName | None = None
    workers: int | None = Field(None, gt=0)
    address: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ParallelConfig:
        if self.backend == "local" and self.workers not in (None, 1):
            raise ValueError(
                f"parallel.backend local evaluates one policy at a time, got workers: {self.workers}: "
                "set parallel.backend to process or ray, or workers to 1"
            )
        if self.address is not None and self.backend != "ray":
            raise ValueError(
                f"parallel.address names a Ray cluster, got {self.address!r} with backend "
                f"{self.backend or 'unset'}: set parallel.backend: ray, or remove the address"
            )
        if self.address not in (None, "auto") and not _CLUSTER_ADDRESS.fullmatch(self.address):
            raise ValueError(
                "parallel.address must be null (start a local Ray cluster), auto (the cluster `ray start` "
                f"started on this machine) or host:port like 10.0.0.5:6379, got {self.address!r}"
            )
        return self
