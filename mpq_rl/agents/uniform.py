"""Uniform precision: every layer at the same bits, the baseline any mixed-precision search must beat.

Proposes each uniform ``(w, a)`` setting among the candidates whose cost fits the budget, costliest first (so
the first episode is the highest uniform precision the budget allows), until the settings or the evaluation
budget run out. It may use fewer evaluations than ``agent.episodes``: there are only so many uniform settings.
"""

from __future__ import annotations

from typing import Any

from mpq_rl.agents.base import SearchContext, check_options
from mpq_rl.budget import Choice


class Uniform:
    """Every in-budget uniform setting, highest cost first. Takes no ``agent.kwargs``."""

    def __init__(self, **kwargs: Any) -> None:
        check_options("uniform", kwargs, {})

    def search(self, context: SearchContext) -> None:
        budget = context.problem.budget
        layers = len(budget.names)
        settings: list[list[Choice]] = [
            [(w, a)] * layers for w in range(len(budget.weight_bits)) for a in range(len(budget.activation_bits))
        ]
        fitting = [s for s in settings if budget.fits(s)]  # a pair the hardware cannot run costs NaN: never fits
        # costliest first; equal costs go to more weight bits, then more activation bits
        fitting.sort(key=lambda s: (budget.total(s), s[0]), reverse=True)
        context.score_many(fitting[: context.remaining])
