"""Searchers by name: ``agent.name`` in a run configuration picks one from :data:`SEARCHERS`, or names a searcher
class of your own as ``"pkg.module:Class"``.

An entry is called with the ``agent.kwargs`` as keyword arguments and returns a
:class:`~mpq_rl.search.searcher.Searcher`; it raises :class:`~mpq_rl.errors.UserError` for keys it does not know.
Modules are imported when their searcher is built, so a run with a baseline never imports stable-baselines3.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mpq_rl.errors import UserError
from mpq_rl.registry import Registry
from mpq_rl.search.searcher import SearchContext, Searcher

SearcherFactory = Callable[..., Searcher]

SEARCHERS: Registry[SearcherFactory] = Registry(
    "agent",
    {
        # The default: model-based PPO on a learned surrogate of the proxy, mpq_rl/agents/model_based.py.
        "mbppo": "mpq_rl.agents.model_based:ModelBasedPPO",
        # Reinforcement learning (stable-baselines3), mpq_rl/agents/rl.py; ddpg follows HAQ.
        "ddpg": "mpq_rl.agents.rl:ddpg",
        "td3": "mpq_rl.agents.rl:td3",
        "sac": "mpq_rl.agents.rl:sac",
        "ppo": "mpq_rl.agents.rl:ppo",
        "a2c": "mpq_rl.agents.rl:a2c",
        # Baselines without learning, one module each in mpq_rl/agents/.
        "uniform": "mpq_rl.agents.uniform:Uniform",
        "random": "mpq_rl.agents.random_search:RandomSearch",
        "greedy": "mpq_rl.agents.greedy:Greedy",
        "hawq": "mpq_rl.agents.hawq:Hawq",
        "exhaustive": "mpq_rl.agents.exhaustive:Exhaustive",
        # EvoPress-style evolution (budget-keeping mutations, selection on growing subsets), agents/evolution.py.
        "evolution": "mpq_rl.agents.evolution:Evolution",
        # llama.cpp's Q3_K_M / Q4_K_M / Q5_K_M rules of thumb for causal LMs, mpq_rl/agents/fixed_mix.py.
        "fixed_mix": "mpq_rl.agents.fixed_mix:FixedMix",
        # The mbppo pipeline without the agent (surrogate, solver, neighbours, UCB), agents/surrogate_search.py.
        "surrogate": "mpq_rl.agents.surrogate_search:SurrogateSearch",
    },
)


def build_searcher(name: str, kwargs: dict[str, Any] | None = None) -> Searcher:
    """The searcher registered as ``name`` (or the class ``"pkg.module:Class"``), built with ``kwargs``
    (``agent.kwargs``)."""
    factory = SEARCHERS.resolve(name)
    searcher = factory(**dict(kwargs or {}))
    if not isinstance(searcher, Searcher):
        raise UserError(
            f"agent {name!r} built a {type(searcher).__name__}, not a searcher: subclass mpq_rl.agents.Searcher "
            "and implement search(context)"
        )
    return searcher


__all__ = ["SEARCHERS", "SearchContext", "Searcher", "SearcherFactory", "build_searcher"]
