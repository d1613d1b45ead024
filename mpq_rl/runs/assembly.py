"""Where a run configuration becomes a workload, a search problem or an environment: the one step from the
:class:`~mpq_rl.config.RunConfig` to the typed sections the builders below take (:class:`WorkloadSettings`,
:class:`ProblemSettings`). The command line, the run layer, ``gym.make("mpq_rl/BitWidth-v1", config=...)`` and the
Python API come here with a config (a YAML path, a mapping, a RunConfig or None for the defaults)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
from torch import nn

from mpq_rl.config import RunConfig, load_config
from mpq_rl.envs.bitwidth import BitWidthEnv
from mpq_rl.envs.factory import ClosesProblem
from mpq_rl.hardware import CostTable
from mpq_rl.search import problem as problems
from mpq_rl.search.evaluator import Evaluator
from mpq_rl.search.problem import ProblemSettings, SearchProblem
from mpq_rl.workloads import workload as workloads
from mpq_rl.workloads.data import Splits
from mpq_rl.workloads.workload import Workload, WorkloadSettings

ConfigSource = str | Path | dict[str, Any] | RunConfig | None
"""What :func:`~mpq_rl.config.load_config` takes: a YAML path, a mapping, a RunConfig, or None (the defaults)."""


def workload_settings(config: RunConfig) -> WorkloadSettings:
    """The sections of ``config`` a workload is built from."""
    return WorkloadSettings(
        model=config.model,
        data=config.data,
        quantization=config.quantization,
        device=config.device,
        seed=config.seed,
        proxy_metric=config.proxy.metric,
    )


def problem_settings(config: RunConfig) -> ProblemSettings:
    """The sections of ``config`` a search problem is built from."""
    return ProblemSettings(
        workload=workload_settings(config),
        hardware=config.hardware,
        budget=config.budget,
        proxy=config.proxy,
        reward=config.reward,
    )


def load_workload(config: ConfigSource = None, with_data: bool = True) -> Workload:
    """The model, data and layer table ``config`` describes (:func:`mpq_rl.workloads.workload.load_workload`)."""
    return workloads.load_workload(workload_settings(load_config(config)), with_data=with_data)


def assemble_workload(config: ConfigSource, model: nn.Module, splits: Splits) -> Workload:
    """A workload from a model and data splits in hand, the rest from ``config``
    (:func:`mpq_rl.workloads.workload.assemble_workload`)."""
    return workloads.assemble_workload(workload_settings(load_config(config)), model, splits)


def build_problem(
    config: ConfigSource = None,
    *,
    workload: Workload | None = None,
    costs: CostTable | None = None,
    evaluator: Evaluator | None = None,
) -> SearchProblem:
    """The search problem ``config`` describes, with the pieces in hand used as given
    (:func:`mpq_rl.search.problem.build_problem`)."""
    settings = problem_settings(load_config(config))
    return problems.build_problem(settings, workload=workload, costs=costs, evaluator=evaluator)


def make_bitwidth_env(
    config: ConfigSource = None,
    *,
    workload: Workload | None = None,
    costs: CostTable | None = None,
    evaluator: Evaluator | None = None,
    discrete: bool = False,
) -> gym.Env:
    """What ``gym.make("mpq_rl/BitWidth-v1", config=...)`` builds: a :class:`~mpq_rl.envs.BitWidthEnv` over the
    problem ``config`` describes (defaults: the digits workload), from it and the pieces in hand (``workload``,
    ``costs``, a shared ``evaluator``, which stays open). Closing the environment closes that problem."""
    problem = build_problem(config, workload=workload, costs=costs, evaluator=evaluator)
    return ClosesProblem(BitWidthEnv(problem, discrete=discrete))
