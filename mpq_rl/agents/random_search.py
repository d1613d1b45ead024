"""Random search: uniformly sampled policies, made to fit the budget the way the environment does.

Each layer's weight and activation candidates are drawn uniformly (seeded by the run's seed), then the layers are
walked in order with :meth:`~mpq_rl.search.budget.Budget.projected`, which clips each choice to the highest bits that
still leave room for the remaining layers at their lowest bits. Every proposal is therefore within budget, and
random search sees exactly the policies an RL agent acting at random would. Policies are scored a batch at a time
(:attr:`~mpq_rl.search.searcher.SearchContext.batch`), in parallel with a parallel backend; the batch size does not
change which policies are drawn.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mpq_rl.search.budget import Budget, Choice
from mpq_rl.search.searcher import SearchContext, Searcher, SearcherOptions, parse_options


def sample_policy(budget: Budget, rng: np.random.Generator) -> list[Choice]:
    """One uniformly drawn choice per searched layer, projected into the budget."""
    layers = len(budget.names)
    weights = rng.integers(len(budget.weight_codes), size=layers)
    activations = rng.integers(len(budget.activation_codes), size=layers)
    return budget.projected([(int(w), int(a)) for w, a in zip(weights, activations, strict=True)])


class RandomSearch(Searcher):
    """Seeded random in-budget policies until the evaluation budget is spent. Takes no ``agent.kwargs``."""

    def __init__(self, **kwargs: Any) -> None:
        parse_options("random", kwargs, SearcherOptions)

    def search(self, context: SearchContext) -> None:
        budget = context.problem.budget
        rng = context.rng()
        while not context.done:
            batch = [sample_policy(budget, rng) for _ in range(min(context.batch, context.remaining))]
            context.score_many(batch)
