"""The adaptive-precision rule of MARViN / AdaPT: when and how each weight tensor changes its fixed-point format.

Each weight tensor carries a word length ``wl`` and fractional length ``fl`` (values are integers times
``2^-fl`` in ``[-2^(wl-1), 2^(wl-1) - 1]``), a lookback ``lb`` and a histogram resolution ``res``. Every training
step the caller hands the rule the tensor's gradient, already quantized to ``(wl, fl)`` with stochastic rounding;
the rule L2-normalizes it into a window and updates ``lb`` and ``res`` from the window's gradient diversity. When
the window holds ``lb`` gradients, :meth:`AdaptRule.adapt` pushes the precision down (the smallest ``fl``, then
``wl``, at which the weights' histogram does not change) and then up (by a step that grows with the gradient
diversity), and empties the window. A global push-up strategy escalates min -> mean -> max while the loss does not
improve.

Source: Lorenz et al., AdaPT (SDM 2023), github.com/lorenz0890/AdaPT ``optimizers/msgd_fp.py``, with three
corrections documented in docs/adapt.md (bisection at the midpoint, a true KL divergence of probabilities, the
whole tensor measured) and a fourth (the bisection returns the smallest precision it verified, not the bracket
below it). Nothing here trains: the rule is a state machine over numbers and tensors, tested on hand-worked cases.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from mpq_rl.adapt.fixed_point import fixed_point

Strategy = Literal["min", "mean", "max"]
ESCALATION: dict[Strategy, Strategy] = {"min": "mean", "mean": "max", "max": "max"}


@dataclass(frozen=True)
class AdaptSettings:
    """AdaPT's published constants (``configs/image_recognition/resnet_msgd_fp_*.ini``)."""

    start_wl: int = 8
    start_fl: int = 4
    start_lookback: int = 25
    start_resolution: int = 50
    min_fl: int = 4
    """Push-down never goes below this fractional length."""
    min_lookback: int = 25
    max_lookback: int = 100
    min_resolution: int = 50
    max_resolution: int = 150
    lookback_momentum: float = 1.0
    """``m`` in ``lb <- ceil(m * clip(100 / GD) + (1 - m) * lb)``; AdaPT uses 1.0 for ResNets."""
    max_bits: int = 32
    buffer_bits: int = 8
    """RB: ``fl <= max_bits - RB`` and ``wl >= min(fl + RB, max_bits)`` after every push-up."""

    @classmethod
    def capped(cls, max_bits: int) -> AdaptSettings:
        """AdaPT's rule with word lengths of at most ``max_bits`` (a deployable policy: AdaPT's 32 with a buffer of
        8 ends every layer at 12 to 32 bits, more than W8A8 costs). The buffer scales with the cap (a quarter of
        it, as AdaPT's 8 of 32), training starts at ``max_bits``, and the fractional lengths stay below the cap."""
        buffer = max(1, max_bits // 4)
        top_fl = max_bits - buffer
        return cls(
            start_wl=max_bits,
            start_fl=min(cls.start_fl, top_fl),
            min_fl=min(cls.min_fl, top_fl),
            max_bits=max_bits,
            buffer_bits=buffer,
        )


@dataclass(frozen=True)
class Precision:
    """One weight tensor's fixed-point format and the rule's two knobs for it."""

    wl: int
    fl: int
    lb: int
    res: int


def gradient_diversity(count: int, window_sum: torch.Tensor) -> float:
    """``count / ||sum||`` of ``count`` unit-norm gradients: 1 when they all agree, larger as they spread out
    (``sqrt(count)`` for orthogonal ones); infinite when they cancel exactly."""
    norm = float(window_sum.norm(2))
    return math.inf if norm == 0.0 else count / norm


def next_lookback(diversity: float, lookback: int, settings: AdaptSettings) -> int:
    """``ceil(m * clip(100 / GD, lb_min, lb_max) + (1 - m) * lb)``: diverse gradients shorten the window."""
    target = min(max(settings.max_lookback / diversity, settings.min_lookback), settings.max_lookback)
    m = settings.lookback_momentum
    return math.ceil(m * target + (1.0 - m) * lookback)


def next_resolution(lookback: int, resolution: int, settings: AdaptSettings) -> int:
    """One bin more while the lookback sits at its maximum, one fewer at its minimum, within the range."""
    if lookback >= settings.max_lookback:
        resolution += 1
    elif lookback <= settings.min_lookback:
        resolution -= 1
    return min(max(resolution, settings.min_resolution), settings.max_resolution)


def histogram_kl(weights: torch.Tensor, quantized: torch.Tensor, bins: int) -> float:
    """KL(P || Q) between the histogram P of ``weights`` and Q of ``quantized`` on the same ``bins`` bins over the
    weights' range; both are divided by the number of weights, so a value pushed out of the range counts as lost
    mass. Zero exactly when every weight stays in its bin; infinite when a bin of P empties in Q."""
    w = weights.detach().flatten().double()
    lo, hi = float(w.min()), float(w.max())
    p = torch.histc(w, bins, lo, hi) / w.numel()
    q = torch.histc(quantized.detach().flatten().double(), bins, lo, hi) / w.numel()
    held = p > 0
    if bool((q[held] == 0).any()):
        return math.inf
    return float((p[held] * (p[held] / q[held]).log()).sum())


def loses_information(weights: torch.Tensor, wl: int, fl: int, bins: int) -> bool:
    """Whether fake-quantizing ``weights`` to ``(wl, fl)`` (round to nearest, as the forward pass does) changes
    their histogram at ``bins`` bins."""
    with torch.no_grad():
        quantized = fixed_point(wl, fl).values(weights.detach().float())
    return histogram_kl(weights, quantized, bins) > 0.0


def _smallest(lo: int, hi: int, keeps_information) -> int:
    """The smallest value in ``[lo, hi]`` that keeps the information, by bisection (``hi`` itself is never tested:
    it is the current precision and is kept when nothing smaller qualifies)."""
    while lo < hi:
        mid = (lo + hi) // 2
        if keeps_information(mid):
            hi = mid
        else:
            lo = mid + 1
    return hi


def push_down(weights: torch.Tensor, wl: int, fl: int, bins: int, settings: AdaptSettings) -> tuple[int, int]:
    """The smallest ``fl`` in ``[min_fl, fl]`` (at word length ``wl``), then the smallest ``wl`` in ``[fl, wl]``
    (at that ``fl``), at which the weights' histogram stays the same."""
    fl = _smallest(min(settings.min_fl, fl), fl, lambda f: not loses_information(weights, wl, f, bins))
    wl = _smallest(min(fl, wl), wl, lambda w: not loses_information(weights, w, fl, bins))
    return wl, fl


def push_up_step(diversity: float, fl: int, strategy: Strategy) -> int:
    """How many fractional bits to add: with ``l = ln(GD) - 1 > 0``, ``s1 = max(ceil(1 / l^2), 1)`` and
    ``s2 = max(min(ceil(32 l^2), 32) - fl, 0)`` combined by ``strategy``; 1 when ``l <= 0`` or GD is infinite."""
    if not math.isfinite(diversity):
        return 1
    l = math.log(diversity) - 1.0  # noqa: E741 (the paper's name)
    if l <= 0.0:
        return 1
    s1 = max(math.ceil(1.0 / l**2), 1)
    s2 = max(min(math.ceil(32.0 * l**2), 32) - fl, 0)
    if strategy == "min":
        return min(s1, s2)
    if strategy == "mean":
        return math.ceil(0.5 * (s1 + s2))
    return max(s1, s2)


def push_up(diversity: float, wl: int, fl: int, strategy: Strategy, settings: AdaptSettings) -> tuple[int, int]:
    """``fl <- min(fl + s, 32)``, ``wl <- min(max(wl, fl) + 1, 32)``, then the buffer of RB bits."""
    top, buffer = settings.max_bits, settings.buffer_bits
    fl = min(fl + push_up_step(diversity, fl, strategy), top)
    wl = min(max(wl, fl) + 1, top)
    fl = min(fl, top - buffer)
    wl = max(min(fl + buffer, top), wl)
    return wl, fl


class LossTrend:
    """The push-up strategy: escalates one level (min -> mean -> max) at every step whose loss is not below the mean
    of the previous ``lookback`` losses, and falls back to min at the first step that is."""

    def __init__(self) -> None:
        self.strategy: Strategy = "min"
        self.history: list[float] = []

    def update(self, loss: float, lookback: int) -> Strategy:
        if len(self.history) >= lookback:
            recent = self.history[-lookback:]
            improved = loss < sum(recent) / len(recent)
            self.strategy = "min" if improved else ESCALATION[self.strategy]
        self.history.append(loss)
        del self.history[:-lookback]
        return self.strategy


@dataclass
class _Window:
    count: int = 0
    total: torch.Tensor | None = None


class AdaptRule:
    """The rule for a set of named weight tensors. Per step: :meth:`observe_loss` once, :meth:`observe_gradient`
    for each tensor, then :meth:`adapt` for each tensor that :meth:`ready` names."""

    def __init__(self, names: list[str], settings: AdaptSettings | None = None) -> None:
        self.settings = settings or AdaptSettings()
        s = self.settings
        start = Precision(s.start_wl, s.start_fl, s.start_lookback, s.start_resolution)
        self.precision = dict.fromkeys(names, start)
        self.trend = LossTrend()
        self._windows = {name: _Window() for name in names}

    @property
    def strategy(self) -> Strategy:
        return self.trend.strategy

    def observe_loss(self, loss: float) -> Strategy:
        """Escalate or reset the push-up strategy; the loss window is the layers' mean lookback."""
        lookbacks = [p.lb for p in self.precision.values()]
        return self.trend.update(loss, round(sum(lookbacks) / len(lookbacks)))

    def observe_gradient(self, name: str, gradient: torch.Tensor) -> float:
        """Add the (already quantized) gradient, L2-normalized, to ``name``'s window; update ``lb`` and ``res``
        from the window's gradient diversity, which is returned."""
        g = gradient.detach().flatten().double()
        norm = g.norm(2)
        if norm > 0:
            g = g / norm
        window = self._windows[name]
        window.count += 1
        window.total = g.clone() if window.total is None else window.total + g
        diversity = gradient_diversity(window.count, window.total)
        p = self.precision[name]
        lb = next_lookback(diversity, p.lb, self.settings)
        self.precision[name] = Precision(p.wl, p.fl, lb, next_resolution(lb, p.res, self.settings))
        return diversity

    def ready(self, name: str) -> bool:
        """Whether ``name``'s window holds ``lb`` gradients."""
        return self._windows[name].count >= self.precision[name].lb

    def adapt(self, name: str, weights: torch.Tensor) -> Precision:
        """Push ``name``'s precision down, then up, from its full-precision ``weights``; empty its window."""
        p = self.precision[name]
        window = self._windows[name]
        diversity = gradient_diversity(window.count, window.total)
        wl, fl = push_down(weights, p.wl, p.fl, p.res, self.settings)
        wl, fl = push_up(diversity, wl, fl, self.strategy, self.settings)
        self.precision[name] = Precision(wl, fl, p.lb, p.res)
        self._windows[name] = _Window()
        return self.precision[name]
