"""The budget: how much of the W8A8 cost a policy may spend, and how choices are kept within it.

Costs are precomputed per searched layer for every candidate bit pair, so checking, projecting and lowering a
choice are array lookups. ``project`` is mpq_rl's default: at each layer, the chosen bits are clipped to the
highest bits that still let every remaining layer fit at its lowest bits, so every episode ends within budget
and the agent sees the bits actually used. ``lower_to_fit`` is HAQ's end-of-episode "action wall" (lower bits
from the last layer backwards until the policy fits), kept for comparison.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mpq_rl.errors import UserError
from mpq_rl.quantization.policy import BitPair, Policy

_SLACK = 1e-9
"""Relative tolerance on the budget, so a policy exactly at the budget is not refused for rounding."""

Choice = tuple[int, int]
"""Indices into the weight and activation candidate lists."""


def within_fraction(ratio: float, fraction: float) -> bool:
    """Whether a cost of ``ratio`` x W8A8 fits a budget of ``fraction`` x W8A8 (with the rounding slack)."""
    return ratio <= fraction * (1.0 + _SLACK)


@dataclass
class Budget:
    """Costs of the searched layers' candidate bit pairs in one metric, and the limit they must fit under."""

    names: tuple[str, ...]
    weight_codes: tuple[int, ...]
    """The weight candidates, as precision codes (:class:`mpq_rl.quantization.formats.Precision` serialized)."""
    activation_codes: tuple[int, ...]
    """The activation candidates, as precision codes."""
    costs: np.ndarray
    """[searched layer, weight candidate, activation candidate] in the metric's units."""
    fixed_cost: float
    """Cost of the layers outside the search, at their fixed bits."""
    reference: float
    """Cost of the whole model at ``reference_bits``."""
    fraction: float
    metric: str
    reference_bits: tuple[int, int] = (8, 8)
    """W8A8, or W8 with activations at their deployed precision for a weight-only search."""

    def __post_init__(self) -> None:
        self.limit = self.fraction * self.reference * (1.0 + _SLACK)
        self.min_costs = np.nanmin(self.costs.reshape(len(self.names), -1), axis=1)
        self.suffix_min = np.concatenate([np.cumsum(self.min_costs[::-1])[::-1], [0.0]])
        # Plain-Python copies for the per-step methods: on arrays this small numpy's fixed cost per call is ~10x
        # the work, and a step must stay cheap for 1000-layer models. ``_by_cost`` lists each layer's (cost, w, a)
        # from the costliest down, ties by more weight bits then more activation bits (NaN entries never fit).
        self._cost_rows: list[list[list[float]]] = self.costs.tolist()
        self._suffix_min: list[float] = self.suffix_min.tolist()
        self._by_cost = [
            sorted(
                ((c, w, a) for w, row in enumerate(rows) for a, c in enumerate(row) if not math.isnan(c)), reverse=True
            )
            for rows in self._cost_rows
        ]
        self._cheapest = [tuple(int(i) for i in np.unravel_index(layer.argmin(), layer.shape)) for layer in self.costs]

    @classmethod
    def from_costs(
        cls,
        metric_table: np.ndarray,
        table_bits: Sequence[int],
        layer_names: Sequence[str],
        searched: Sequence[str],
        fixed: Policy,
        weight_codes: Sequence[int],
        activation_codes: Sequence[int],
        fraction: float,
        metric: str,
        reference: float,
        reference_bits: tuple[int, int] = (8, 8),
    ) -> Budget:
        """Slice a cost table ``[layer, w, a]`` (bits ``table_bits``) down to the searched layers' candidates."""
        position = {b: i for i, b in enumerate(table_bits)}
        row = {name: i for i, name in enumerate(layer_names)}
        w_idx = [position[b] for b in weight_codes]
        a_idx = [position[b] for b in activation_codes]
        costs = np.stack([metric_table[row[n]][np.ix_(w_idx, a_idx)] for n in searched])
        fixed_cost = float(sum(metric_table[row[n], position[w], position[a]] for n, (w, a) in fixed.items()))
        return cls(
            names=tuple(searched),
            weight_codes=tuple(weight_codes),
            activation_codes=tuple(activation_codes),
            costs=costs,
            fixed_cost=fixed_cost,
            reference=reference,
            fraction=fraction,
            metric=metric,
            reference_bits=tuple(reference_bits),
        )

    def with_fraction(self, fraction: float) -> Budget:
        """The same costs under another budget (checked to be feasible)."""
        budget = dataclasses.replace(self, fraction=float(fraction))
        budget.check_feasible()
        return budget

    @property
    def min_fraction(self) -> float:
        """The smallest reachable cost (every searched layer at its cheapest bits) as a fraction of W8A8."""
        return (self.fixed_cost + self.suffix_min[0]) / self.reference

    def check_feasible(self) -> None:
        if self.fixed_cost + self.suffix_min[0] > self.limit:
            reference = "W{}A{}".format(*self.reference_bits)
            raise UserError(
                f"budget {self.fraction:g} of {reference} {self.metric} cannot be met: the lowest bits reach "
                f"{self.min_fraction:.4f} at best; raise budget to at least {self.min_fraction:.4f} or allow lower bits"
            )

    def within(self, ratio: float) -> bool:
        """Whether a whole-model cost of ``ratio`` x W8A8 fits this budget."""
        return within_fraction(ratio, self.fraction)

    def top_choice(self) -> Choice:
        """The highest candidate bits for weights and activations: where a search from the top starts."""
        return len(self.weight_codes) - 1, len(self.activation_codes) - 1

    def runnable_pairs(self, step: int) -> list[Choice]:
        """The candidate pairs of searched layer ``step`` the hardware can run (cost not NaN)."""
        w_idx, a_idx = np.nonzero(~np.isnan(self.costs[step]))
        return [(int(w), int(a)) for w, a in zip(w_idx, a_idx, strict=True)]

    def uniform_choices(self) -> list[list[Choice]]:
        """Every uniform setting (one pair for all searched layers) that fits, costliest first; equal costs go to
        more weight bits, then more activation bits. A pair the hardware cannot run costs NaN and never fits."""
        layers = len(self.names)
        settings = [[(w, a)] * layers for w in range(len(self.weight_codes)) for a in range(len(self.activation_codes))]
        fitting = [s for s in settings if self.fits(s)]
        fitting.sort(key=lambda s: (self.total(s), s[0]), reverse=True)
        return fitting

    def bits(self, choice: Choice) -> BitPair:
        return self.weight_codes[choice[0]], self.activation_codes[choice[1]]

    def cost(self, step: int, choice: Choice) -> float:
        return self._cost_rows[step][choice[0]][choice[1]]

    def total(self, choices: Sequence[Choice]) -> float:
        """Whole-model cost of one choice per searched layer, fixed layers included."""
        return self.fixed_cost + float(sum(self.costs[s, w, a] for s, (w, a) in enumerate(choices)))

    def fits(self, choices: Sequence[Choice]) -> bool:
        return self.total(choices) <= self.limit

    def project(self, step: int, spent: float, choice: Choice) -> Choice:
        """The highest bits at or below ``choice`` that leave room for the remaining layers at their lowest bits.

        ``spent`` is the cost so far, fixed layers included. Among the pairs that fit, the costliest (the closest
        to what was asked) wins, ties going to more weight bits.
        """
        room = self.limit - spent - self._suffix_min[step + 1]
        w, a = choice
        if self._cost_rows[step][w][a] <= room:
            return choice
        for cost, w_fit, a_fit in self._by_cost[step]:
            if cost <= room and w_fit <= w and a_fit <= a:
                return w_fit, a_fit
        return self._cheapest[step]

    def projected(self, choices: Sequence[Choice]) -> list[Choice]:
        """``choices`` made to fit, layer by layer, by :meth:`project` (what the environment does)."""
        spent = self.fixed_cost
        fitted = []
        for step, choice in enumerate(choices):
            choice = self.project(step, spent, (int(choice[0]), int(choice[1])))
            spent += self.cost(step, choice)
            fitted.append(choice)
        return fitted

    def lower_to_fit(self, choices: Sequence[Choice]) -> list[Choice]:
        """HAQ's action wall: from the last layer backwards, lower each layer's bits one notch until it fits."""
        lowered = [tuple(c) for c in choices]
        while not self.fits(lowered):
            changed = False
            for step in reversed(range(len(lowered))):
                w, a = lowered[step]
                if w > 0 or a > 0:
                    lowered[step] = (max(w - 1, 0), max(a - 1, 0))
                    changed = True
                    if self.fits(lowered):
                        break
            if not changed:
                break
        return [(int(w), int(a)) for w, a in lowered]
