"""Exhaustive search: every policy of the search space, for spaces small enough to enumerate.

The ground truth the other searchers are measured against on small problems. Policies over budget are skipped
without being evaluated (they cost nothing and are not recorded); the in-budget ones are scored in enumeration
order (the first searched layer varies slowest) until they or the evaluation budget run out, so give
``agent.episodes`` at least the number of in-budget policies to see them all.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from typing import Any

from mpq_rl.errors import UserError
from mpq_rl.search.budget import Budget, Choice
from mpq_rl.search.searcher import SearchContext, Searcher, SearcherOptions, parse_options

MAX_POLICIES = 10**6
"""The largest search space :class:`Exhaustive` enumerates."""


def in_budget_policies(budget: Budget) -> Iterator[list[Choice]]:
    """Every policy within budget, in enumeration order."""
    pairs = [budget.runnable_pairs(step) for step in range(len(budget.names))]
    size = math.prod(len(p) for p in pairs)
    if size > MAX_POLICIES:
        raise UserError(
            f"exhaustive search would enumerate {size:,} policies, more than {MAX_POLICIES:,}: "
            "search fewer layers (quantization.include / exclude / pin) or fewer bit candidates"
        )
    for policy in itertools.product(*pairs):
        if budget.fits(policy):
            yield list(policy)


class Exhaustive(Searcher):
    """Score every in-budget policy (spaces up to 10^6 policies). Takes no ``agent.kwargs``."""

    def __init__(self, **kwargs: Any) -> None:
        parse_options("exhaustive", kwargs, SearcherOptions)

    def search(self, context: SearchContext) -> None:
        policies = in_budget_policies(context.problem.budget)
        while not context.done:
            batch = list(itertools.islice(policies, context.batch))
            if not batch:
                return
            context.score_many(batch)
