"""Budget enforcement: how a policy is kept within the budget, one strategy object per rule (``budget.enforcement``).

A rule can act at three moments, and each strategy says what it does at each: while an episode chooses layer by
layer (:meth:`Enforcement.choose`: ``project`` clips each choice so the remaining layers still fit), when a finished
policy is scored (:meth:`Enforcement.settle`: the ``wall`` lowers it until it fits, HAQ's action wall) and in the
reward (:meth:`Enforcement.penalty`: ``penalty`` charges a policy over budget). The environment calls ``choose``;
:meth:`~mpq_rl.search.problem.SearchProblem.score` calls ``settle`` and ``penalty``; nothing else reads the rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from mpq_rl.search.budget import Budget, Choice, within_fraction

PENALTY_PER_EXCESS = 10.0
"""Reward lost per unit of relative budget excess under ``penalty`` enforcement."""


class Enforcement:
    """A budget rule; at each moment where it does not act, the choices and the reward pass unchanged."""

    name: ClassVar[str]

    def choose(self, budget: Budget, step: int, spent: float, asked: Choice) -> Choice:
        """The choice kept at searched layer ``step`` when ``asked`` is chosen with ``spent`` already spent."""
        return asked

    def settle(self, budget: Budget, choices: Sequence[Choice], changed: int) -> tuple[list[Choice], int]:
        """The choices scored for a finished policy, and how many layers the budget changed (``changed`` so far)."""
        return list(choices), changed

    def penalty(self, ratio: float, fraction: float) -> float:
        """Reward lost by a policy costing ``ratio`` x W8A8 under a budget of ``fraction`` x W8A8."""
        return 0.0


class Projection(Enforcement):
    """Each choice clipped to the highest bits that still let every remaining layer fit at its lowest bits."""

    name = "project"

    def choose(self, budget: Budget, step: int, spent: float, asked: Choice) -> Choice:
        return budget.project(step, spent, asked)


class Wall(Enforcement):
    """HAQ's action wall: a finished policy over budget is lowered from the last layer back until it fits."""

    name = "wall"

    def settle(self, budget: Budget, choices: Sequence[Choice], changed: int) -> tuple[list[Choice], int]:
        choices = list(choices)
        lowered = budget.lower_to_fit(choices)
        return lowered, sum(a != b for a, b in zip(lowered, choices, strict=True))


class Penalty(Enforcement):
    """The policy left as chosen; one over budget loses ``PENALTY_PER_EXCESS`` times its relative excess."""

    name = "penalty"

    def penalty(self, ratio: float, fraction: float) -> float:
        return 0.0 if within_fraction(ratio, fraction) else PENALTY_PER_EXCESS * (ratio / fraction - 1.0)


ENFORCEMENTS: dict[str, Enforcement] = {rule.name: rule for rule in (Projection(), Wall(), Penalty())}
"""The strategy of each ``budget.enforcement`` name."""
