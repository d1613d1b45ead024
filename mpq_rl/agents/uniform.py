"""Uniform precision: every layer at the same bits, the baseline any mixed-precision search must beat.

Proposes each uniform ``(w, a)`` setting among the candidates whose cost fits the budget, costliest first (so
the first episode is the highest uniform precision the budget allows), until the settings or the evaluation
budget run out. It may use fewer evaluations than ``agent.episodes``: there are only so many uniform settings.
"""

from __future__ import annotations

from typing import Any

from mpq_rl.search.searcher import SearchContext, Searcher, SearcherOptions, parse_options


class Uniform(Searcher):
    """Every in-budget uniform setting, highest cost first. Takes no ``agent.kwargs``."""

    def __init__(self, **kwargs: Any) -> None:
        parse_options("uniform", kwargs, SearcherOptions)

    def search(self, context: SearchContext) -> None:
        context.score_many(context.problem.budget.uniform_choices()[: context.remaining])
