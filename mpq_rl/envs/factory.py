"""What ``gym.make("mpq_rl/BitWidth-v1", config=...)`` builds: a problem from a config, and the environment that
plays it, wrapped so that closing the environment closes the problem built for it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym

from mpq_rl.config import RunConfig
from mpq_rl.envs.bitwidth import BitWidthEnv
from mpq_rl.hardware import CostTable
from mpq_rl.search.evaluator import Evaluator
from mpq_rl.search.problem import build_problem
from mpq_rl.workloads.workload import Workload

ENV_ID = "mpq_rl/BitWidth-v1"


class ClosesProblem(gym.Wrapper):
    """Closes the problem of the environment it wraps together with the environment (the factory built both)."""

    def close(self) -> None:
        super().close()
        self.env.unwrapped.problem.close()


def make_bitwidth_env(
    config: str | Path | dict[str, Any] | RunConfig | None = None,
    *,
    workload: Workload | None = None,
    costs: CostTable | None = None,
    evaluator: Evaluator | None = None,
    discrete: bool = False,
) -> gym.Env:
    """A :class:`~mpq_rl.envs.BitWidthEnv` over the problem ``config`` describes (a YAML path, a mapping or a
    :class:`~mpq_rl.config.RunConfig`; defaults: the digits workload), built by
    :func:`~mpq_rl.search.problem.build_problem` from it and the pieces in hand (``workload``, ``costs``, a shared
    ``evaluator``, which stays open). Closing the environment closes that problem."""
    problem = build_problem(config, workload=workload, costs=costs, evaluator=evaluator)
    return ClosesProblem(BitWidthEnv(problem, discrete=discrete))
