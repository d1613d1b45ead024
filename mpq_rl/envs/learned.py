"""The bit-width environment played against a learned model: every step rewarded by the model, nothing evaluated."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from mpq_rl.envs.bitwidth import BitWidthEnv
from mpq_rl.envs.observation import FeatureSource
from mpq_rl.search.budget import Choice
from mpq_rl.search.problem import SearchProblem
from mpq_rl.search.sensitivity import Sensitivity


class EpisodeModel(FeatureSource, Protocol):
    """What stands in for the evaluator: a learned per-step reward, and what the model predicts for each candidate
    of a layer (observed by the agent)."""

    def reward(self, step: int, choice: Choice) -> float:
        """The reward of choosing ``choice`` (candidate indices) at searched layer ``step``."""
        ...


class LearnedRewardEnv(BitWidthEnv):
    """:class:`~mpq_rl.envs.BitWidthEnv` with a learned stand-in for the evaluator, for training on a surrogate.

    Spaces, budget enforcement and episode end are the parent's; the observation gains the model's features of the
    layer (before the budget component). Every step is rewarded by ``model.reward(step, choice)``; the final
    ``info`` holds only ``choices`` (the candidate indices used), ``budget`` and ``projected_layers``.
    """

    def __init__(
        self,
        problem: SearchProblem,
        model: EpisodeModel,
        *,
        discrete: bool = False,
        sensitivity: Sensitivity | None = None,
        budgets: Sequence[float] | None = None,
    ) -> None:
        self.model = model
        super().__init__(problem, discrete=discrete, sensitivity=sensitivity, budgets=budgets)

    def _step_reward(self, step: int, choice: Choice) -> float:
        return float(self.model.reward(step, choice))

    def _finish(self, reward: float) -> tuple[float, dict[str, Any]]:
        info = {"choices": list(self._choices), "budget": self.fraction, "projected_layers": self._projected_layers}
        return reward, info

    def pending_choices(self, action: np.ndarray) -> list[Choice] | None:
        """None: no step of this environment evaluates a policy."""
        return None
