"""The bit-width environment's observation: one documented builder for its base components and optional parts.

The base components (the first 11 static per layer, then 4 that change during an episode) are always there; the
optional parts follow in a fixed order, each only when asked for: the ``sensitivity`` errors of the layer's
candidates, a model's features of the layer (:class:`FeatureSource`), and the episode's budget. The table of every
component, with its bounds, is the Observation Space section of :class:`~mpq_rl.envs.BitWidthEnv`.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np
from gymnasium import spaces

from mpq_rl.search.problem import SearchProblem
from mpq_rl.search.sensitivity import Sensitivity

OBSERVATION_FEATURES = (
    ("layer_index", "position of the layer among the searched layers, 0 (first) to 1 (last)", 0.0, 1.0),
    ("is_conv", "1 for a convolution", 0.0, 1.0),
    ("is_linear", "1 for a linear layer", 0.0, 1.0),
    ("is_depthwise", "1 for a depthwise convolution", 0.0, 1.0),
    ("in_channels", "input channels (features), divided by the model's largest", 0.0, 1.0),
    ("out_channels", "output channels (features), divided by the model's largest", 0.0, 1.0),
    ("kernel", "kernel taps, divided by the model's largest", 0.0, 1.0),
    ("stride", "stride (product over axes), divided by the model's largest", 0.0, 1.0),
    ("params", "log(1 + parameters), divided by the model's largest", 0.0, 1.0),
    ("macs", "log(1 + MACs), divided by the model's largest", 0.0, 1.0),
    ("cost_share", "the layer's share of the model's W8A8 cost in the budget metric", 0.0, 1.0),
    ("prev_w_bits", "previous layer's weight bits actually used, 0 (lowest bit-width) to 1 (highest)", 0.0, 1.0),
    ("prev_a_bits", "previous layer's activation bits actually used, 0 (lowest) to 1 (highest)", 0.0, 1.0),
    ("spent", "cost spent so far (fixed layers included), as a fraction of the budget", 0.0, 2.0),
    ("remaining_min", "least cost this and the later layers need, as a fraction of the budget", 0.0, 2.0),
)
STATIC = 11
"""The first components, fixed per layer; the next four change during an episode."""


class FeatureSource(Protocol):
    """Something that describes each searched layer with ``n_features`` values in [0, 1] (e.g. a learned model)."""

    n_features: int

    def features(self, step: int) -> list[float]:
        """``n_features`` values in [0, 1] describing searched layer ``step``."""
        ...


class ObservationBuilder:
    """Each step's observation of one problem, and the ``Box`` it lies in.

    ``sensitivity``: measured quantization errors of the searched layers, one per weight candidate then one per
    activation candidate. ``model``: a :class:`FeatureSource` whose features of the layer follow. ``with_budget``:
    the episode's budget fraction comes last (budget-conditioned episodes).
    """

    def __init__(
        self,
        problem: SearchProblem,
        *,
        sensitivity: Sensitivity | None = None,
        model: FeatureSource | None = None,
        with_budget: bool = False,
    ) -> None:
        n_steps = len(problem.searched)
        n_candidates = len(problem.budget.weight_codes) + len(problem.budget.activation_codes)
        bounds = [(f[2], f[3]) for f in OBSERVATION_FEATURES]
        features = static_features(problem)
        if sensitivity is not None:
            errors = sensitivity.features()
            if errors.shape != (n_steps, n_candidates):
                raise ValueError(f"sensitivity has shape {errors.shape}, expected {(n_steps, n_candidates)}")
            features = np.concatenate([features, errors], axis=1)
            bounds += [(0.0, 1.0)] * n_candidates
        if model is not None:
            bounds += [(0.0, 1.0)] * model.n_features
        if with_budget:
            bounds.append((0.0, 2.0))
        low, high = np.array(bounds, dtype=np.float32).T
        self.space = spaces.Box(low, high, dtype=np.float32)
        # Plain-Python rows: building observations from lists avoids numpy's per-call overhead on arrays of 2 to 15
        # values, which dominated the step time.
        self._rows: list[list[float]] = features.tolist()
        self._model = model
        self._with_budget = with_budget

    def __call__(self, step: int, dynamic: list[float], fraction: float) -> np.ndarray:
        """The observation at searched layer ``step``, given the 4 ``dynamic`` components and the budget
        ``fraction``."""
        row = self._rows[step]
        tail = self._model.features(step) if self._model is not None else []
        if self._with_budget:
            tail = [*tail, min(fraction, 2.0)]
        return np.array(row[:STATIC] + dynamic + row[STATIC:] + tail, dtype=np.float32)


def static_features(problem: SearchProblem) -> np.ndarray:
    """Per searched layer, the first 11 observation components (they do not change during an episode)."""
    workload = problem.workload
    layers = [workload.layers[name] for name in workload.searched]
    costs, metric = problem.costs, problem.metric
    shares = costs.per_layer(costs.reference_policy(), metric) / costs.reference(metric)
    share_of = dict(zip(costs.layer_names, shares, strict=True))

    def scaled(values: list[float]) -> list[float]:
        top = max(values)
        return [v / top if top > 0 else 0.0 for v in values]

    columns = [
        [i / max(len(layers) - 1, 1) for i in range(len(layers))],
        [float(not layer.is_linear) for layer in layers],
        [float(layer.is_linear) for layer in layers],
        [float(layer.is_depthwise) for layer in layers],
        scaled([layer.in_channels for layer in layers]),
        scaled([layer.out_channels for layer in layers]),
        scaled([layer.kernel_size for layer in layers]),
        scaled([math.prod(layer.stride) for layer in layers]),
        scaled([math.log1p(layer.params) for layer in layers]),
        scaled([math.log1p(layer.macs) for layer in layers]),
        [min(max(float(share_of[layer.name]), 0.0), 1.0) for layer in layers],
    ]
    return np.array(columns, dtype=np.float32).T
