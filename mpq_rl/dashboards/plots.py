"""The figures of a run's dashboard, drawn with matplotlib (Agg) for TensorBoard's Images tab.

Each function takes plain numbers and names and returns a figure; nothing here reads a run folder or a config.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mpq_rl.quantization.formats import bits_of, label

INCH_PER_LAYER = 0.28
"""Height (heatmap rows) or width (bar groups) given to each layer, so names stay readable at any layer count."""
MAX_LABELLED_LAYERS = 80
"""Beyond this many layers, every n-th name is shown."""


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot


def _layer_ticks(axes: Any, names: Sequence[str], axis: str) -> None:
    every = max(1, int(np.ceil(len(names) / MAX_LABELLED_LAYERS)))
    ticks = np.arange(0, len(names), every)
    if axis == "x":
        axes.set_xticks(ticks, [names[i] for i in ticks], rotation=60, ha="right", fontsize=9)
    else:
        axes.set_yticks(ticks, [names[i] for i in ticks], fontsize=9)


def bits_figure(policy: Mapping[str, Sequence[int]], title: str) -> Any:
    """Weight and activation bits per layer as grouped bars, labelled with each layer's bits (``4``, ``fp4``),
    as wide as the layer count needs."""
    plt = _pyplot()
    names = list(policy)
    x = np.arange(len(names))
    weights = [bits_of(policy[n][0]) for n in names]
    activations = [bits_of(policy[n][1]) for n in names]
    figure, axes = plt.subplots(figsize=(min(max(6.0, 2.0 + 2 * INCH_PER_LAYER * len(names)), 60.0), 4.5))
    for offset, values, codes, name in (
        (-0.2, weights, [policy[n][0] for n in names], "weights"),
        (0.2, activations, [policy[n][1] for n in names], "activations"),
    ):
        bars = axes.bar(x + offset, np.minimum(values, 8), width=0.4, label=name)
        if len(names) <= MAX_LABELLED_LAYERS:
            axes.bar_label(bars, [label(c) for c in codes], fontsize=8, padding=1)
    axes.set_xlim(-0.6, len(names) - 0.4)
    axes.set_ylim(0, 9.5)
    axes.set_yticks(range(0, 9))
    axes.set_ylabel("bits (16/32 drawn at 8)")
    _layer_ticks(axes, names, "x")
    axes.set_title(title, fontsize=10)
    axes.legend(loc="upper right", fontsize=8, ncols=2)
    figure.tight_layout()
    return figure


@dataclass(frozen=True)
class ParetoView:
    """What the Pareto view draws: every evaluated policy, the front, the uniform settings and the budget."""

    proxy: str
    """The proxy's name (the y axis), e.g. ``top1``."""
    metric: str
    """The budget's cost metric (the x axis is its fraction of W8A8)."""
    budget: float
    costs: Sequence[float]
    """Cost ratio of each evaluated policy."""
    proxies: Sequence[float]
    front: Sequence[tuple[float, float]]
    """(cost ratio, proxy) of the Pareto front."""
    uniform: Sequence[tuple[str, float, float | None]]
    """(label like ``W4A4``, cost ratio, calibration proxy or None when not measured)."""
    best: tuple[float, float] | None = None


def pareto_figure(view: ParetoView, title: str) -> Any:
    """Proxy on calibration data against cost ratio: the evaluated policies, the front as a staircase, the budget
    as a vertical line, the uniform settings (a labelled tick where unmeasured), the best policy ringed. The y
    axis starts at the 5th percentile of the points, so that differences near the top stay visible."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(8.0, 5.0))
    axes.scatter(view.costs, view.proxies, s=10, color="0.6", alpha=0.6, label=f"evaluated ({len(view.costs)})")
    if view.front:
        front = sorted(view.front)
        axes.step([c for c, _ in front], [p for _, p in front], where="post", color="C0", lw=1.5)
        axes.scatter([c for c, _ in front], [p for _, p in front], s=22, color="C0", label="Pareto front")
    measured = [(name, c, p) for name, c, p in view.uniform if p is not None]
    if measured:
        axes.scatter(
            [c for _, c, _ in measured],
            [p for _, _, p in measured],
            marker="s",
            s=26,
            color="C2",
            label="uniform settings",
        )
        for name, c, p in measured:
            axes.annotate(name, (c, p), fontsize=7, xytext=(3, -8), textcoords="offset points", color="C2")
    for name, c, p in view.uniform:
        if p is None:
            axes.axvline(c, color="C2", lw=0.6, alpha=0.35)
            axes.annotate(
                name,
                (c, 0.0),
                xycoords=("data", "axes fraction"),
                rotation=90,
                fontsize=6,
                color="C2",
                xytext=(1, 2),
                textcoords="offset points",
            )
    axes.axvline(view.budget, color="C3", ls="--", lw=1.2, label=f"budget {view.budget:g}")
    if view.best is not None:
        axes.scatter(
            [view.best[0]], [view.best[1]], s=120, facecolors="none", edgecolors="C3", lw=1.5, label="best in budget"
        )
    shown = [p for p in (*view.proxies, *(p for _, _, p in measured)) if np.isfinite(p)]  # a NaN score is no point
    if len(shown) > 1:  # the top of the range is where the choice is made: the worst 5% fall below the axis
        low, top = float(np.percentile(shown, 5)), max(shown)
        pad = 0.05 * max(top - low, 1e-4)
        axes.set_ylim(low - pad, top + pad)
    axes.set_xlabel(f"{view.metric} / W8A8")
    axes.set_ylabel(f"{view.proxy} on calibration data")
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    return figure


def bits_heatmap(
    names: Sequence[str], episodes: Sequence[int], weights: np.ndarray, activations: np.ndarray, title: str
) -> Any:
    """The bits each layer (rows) got in each episode (columns), weights and activations side by side."""
    plt = _pyplot()
    height = min(max(3.0, 1.5 + INCH_PER_LAYER * len(names)), 40.0)
    figure, panels = plt.subplots(1, 2, figsize=(12.0, height), sharey=True)
    extent = (episodes[0] - 0.5, episodes[-1] + 0.5, len(names) - 0.5, -0.5) if episodes else None
    for axes, values, what in ((panels[0], weights, "weight"), (panels[1], activations, "activation")):
        image = axes.imshow(
            np.minimum(values.T, 8),
            aspect="auto",
            interpolation="nearest",
            cmap="viridis",
            vmin=1.5,
            vmax=8.5,
            extent=extent,
        )
        axes.set_xlabel("episode")
        axes.set_title(f"{what} bits", fontsize=10)
    _layer_ticks(panels[0], names, "y")
    bar = figure.colorbar(image, ax=panels, ticks=range(2, 9), fraction=0.03)
    bar.set_label("bits (16/32 drawn at 8)")
    figure.suptitle(title, fontsize=10)
    return figure


def fit_figure(
    predicted: Sequence[float], measured: Sequence[float], rounds: Sequence[int], proxy: str, title: str
) -> Any:
    """The surrogate's prediction of each policy against its measured proxy, coloured by round, with y = x."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(5.5, 5.0))
    points = axes.scatter(measured, predicted, c=rounds, s=14, cmap="plasma")
    if measured:
        low = min(min(measured), min(predicted))
        high = max(max(measured), max(predicted))
        axes.plot([low, high], [low, high], color="0.5", lw=1, ls="--", label="prediction = measurement")
        axes.legend(fontsize=8, loc="upper left")
    figure.colorbar(points, ax=axes, label="round")
    axes.set_xlabel(f"measured {proxy}")
    axes.set_ylabel(f"predicted {proxy} (before the refit)")
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    return figure
