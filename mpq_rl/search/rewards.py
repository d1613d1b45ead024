"""Rewards: how an episode's proxy accuracy and hardware cost become one number for the agent.

A reward is any callable ``reward(outcome: Outcome) -> float``; ``reward.name`` in the config picks a built-in
one here or imports ``"pkg.module:function"``, called with ``reward.kwargs``-bound parameters.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass

from mpq_rl.errors import UserError
from mpq_rl.registry import Registry
from mpq_rl.search.settings import ProxyConfig, RewardConfig


@dataclass(frozen=True)
class Outcome:
    """What an episode produced: proxy score (higher is better) of the policy and of FP32, and its cost."""

    proxy: float
    proxy_fp32: float
    cost_ratio: float
    """Cost in the budget's metric as a fraction of W8A8."""
    budget: float
    """The budget, as a fraction of W8A8."""


def proxy_value(metrics: dict[str, float], proxy: ProxyConfig) -> float:
    """The configured proxy as a higher-is-better score: top-1, agreement, cosine, or minus the KL divergence."""
    key = proxy.key
    if key not in metrics:
        raise UserError(f"proxy {key!r} cannot be scored on this model's outputs: choose another proxy.fidelity")
    return -metrics[key] if key == "kl" else metrics[key]


def haq(outcome: Outcome, scale: float = 0.1) -> float:
    """HAQ (Wang et al. 2019, ``lib/env``): ``scale * (acc - acc_fp32)`` with accuracies in percent."""
    return scale * 100.0 * (outcome.proxy - outcome.proxy_fp32)


def mnasnet(outcome: Outcome, beta: float = -0.07) -> float:
    """MnasNet (Tan et al. 2019): ``acc * (cost / target) ** beta``, a soft cost constraint."""
    return outcome.proxy * (max(outcome.cost_ratio, 1e-12) / outcome.budget) ** beta


def releq(outcome: Outcome, threshold: float = 0.6) -> float:
    """ReLeQ (Elthakeb et al. 2018): ``2((1 - x^0.8) * y^(1/y) - 0.5)``, -1 if ``y < threshold``.

    ``y`` is the proxy relative to FP32; ``x`` the quantization state, here the cost as a fraction of W8A8.
    """
    y = outcome.proxy / outcome.proxy_fp32 if outcome.proxy_fp32 > 0 else 0.0
    if y < threshold:
        return -1.0
    x = min(max(outcome.cost_ratio, 0.0), 1.0)
    return 2.0 * ((1.0 - x**0.8) * y ** (1.0 / y) - 0.5)


REWARDS: Registry[Callable[..., float]] = Registry("reward.name", {"haq": haq, "mnasnet": mnasnet, "releq": releq})


def build_reward(config: RewardConfig) -> Callable[[Outcome], float]:
    """The reward ``config`` names, with its kwargs bound; unknown names and kwargs are user errors."""
    fn = REWARDS.resolve(config.name)
    if not callable(fn):
        raise UserError(f"reward.name {config.name!r} is not a function (it is a {type(fn).__name__})")
    try:
        inspect.signature(fn).bind(None, **config.kwargs)
    except TypeError as exc:
        raise UserError(f"reward.kwargs do not fit reward {config.name!r}: {exc}") from None
    return functools.partial(fn, **config.kwargs)
