"""Searchers by name: ``agent.name`` in a run configuration picks one from :data:`SEARCHERS`.

A factory takes the ``agent.kwargs`` mapping and returns a :class:`~mpq_rl.agents.base.Searcher`; it raises
:class:`~mpq_rl.errors.UserError` for keys it does not know. Modules are imported when their searcher is built,
so a run with a baseline never imports stable-baselines3.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from mpq_rl.agents.base import SearchContext, Searcher
from mpq_rl.errors import UserError

SearcherFactory = Callable[[dict[str, Any]], Searcher]


def _rl(algorithm: str) -> SearcherFactory:
    def build(kwargs: dict[str, Any]) -> Searcher:
        from mpq_rl.agents.rl import RLSearcher

        return RLSearcher(algorithm, kwargs)

    return build


def _class(module: str, cls: str) -> SearcherFactory:
    def build(kwargs: dict[str, Any]) -> Searcher:
        return getattr(importlib.import_module(f"mpq_rl.agents.{module}"), cls)(**kwargs)

    return build


SEARCHERS: dict[str, SearcherFactory] = {
    # The default: model-based PPO on a learned surrogate of the proxy, mpq_rl/agents/model_based.py.
    "mbppo": _class("model_based", "ModelBasedPPO"),
    # Reinforcement learning (stable-baselines3), mpq_rl/agents/rl.py; ddpg follows HAQ.
    "ddpg": _rl("ddpg"),
    "td3": _rl("td3"),
    "sac": _rl("sac"),
    "ppo": _rl("ppo"),
    "a2c": _rl("a2c"),
    # Baselines without learning, one module each in mpq_rl/agents/.
    "uniform": _class("uniform", "Uniform"),
    "random": _class("random_search", "RandomSearch"),
    "greedy": _class("greedy", "Greedy"),
    "hawq": _class("hawq", "Hawq"),
    "exhaustive": _class("exhaustive", "Exhaustive"),
}


def build_searcher(name: str, kwargs: dict[str, Any] | None = None) -> Searcher:
    """The searcher registered as ``name``, built with ``kwargs`` (``agent.kwargs``)."""
    if name not in SEARCHERS:
        raise UserError(f"unknown agent {name!r}: choose one of {', '.join(SEARCHERS)}")
    return SEARCHERS[name](dict(kwargs or {}))


__all__ = ["SEARCHERS", "SearchContext", "Searcher", "SearcherFactory", "build_searcher"]
