"""The compiled cost of a model on a hardware preset: ``[layer, w_bits, a_bits]`` tables of four metrics.

A policy's cost is a sum of table lookups (microseconds), so a search can price thousands of candidates per second.
Budgets are fractions of :meth:`CostTable.reference`, the cost of the same model on the same hardware at
``reference_bits``: W8A8, or W8 with activations at their deployed precision for a weight-only search.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from mpq_rl.errors import UserError
from mpq_rl.quantization.bits import REFERENCE_BITS

METRICS = ("latency", "energy", "size", "bops")
"""What a cost table prices, and what a budget may bound."""


@dataclass(frozen=True, eq=False)
class CostTable:
    """Latency (s), energy (J), size (bits of parameters) and BOPs per layer and bit pair; picklable.

    ``memory_bound_table`` marks the entries where the roofline's memory term wins (all False for pure counts and
    measured tables). Latency and energy are for one batch of ``batch_size`` samples; BOPs are per sample.
    """

    layer_names: tuple[str, ...]
    bits: tuple[int, ...]
    latency: np.ndarray
    energy: np.ndarray
    size: np.ndarray
    bops: np.ndarray
    preset: str
    memory_bound_table: np.ndarray | None = None
    batch_size: int = 1
    table_units: bool = False
    """Latency and energy are a measured table's own numbers (its unit, not seconds and joules)."""
    reference_bits: tuple[int, int] = REFERENCE_BITS
    _layer_pos: dict[str, int] = field(init=False, repr=False)
    _bit_pos: dict[int, int] = field(init=False, repr=False)
    _plain_cache: tuple[dict[str, list], dict[str, float]] | None = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_layer_pos", {name: i for i, name in enumerate(self.layer_names)})
        object.__setattr__(self, "_bit_pos", {b: i for i, b in enumerate(self.bits)})
        if self.memory_bound_table is None:
            object.__setattr__(self, "memory_bound_table", np.zeros(self.latency.shape, dtype=bool))

    def __len__(self) -> int:
        return len(self.layer_names)

    def metric(self, name: str) -> np.ndarray:
        """The ``[L, w, a]`` table of ``name`` (latency, energy, size or bops)."""
        if name not in METRICS:
            raise UserError(f"unknown cost metric {name!r}: choose one of {', '.join(METRICS)}")
        return getattr(self, name)

    def defines(self, metric: str) -> bool:
        """Whether this table has any value for ``metric`` (a latency-only measured table has no energy)."""
        return bool(np.isfinite(self.metric(metric)).any())

    def bit_index(self, bits: int) -> int:
        try:
            return self._bit_pos[int(bits)]
        except KeyError:
            raise UserError(f"bit-width {bits} is not in the cost table; tables cover {list(self.bits)}") from None

    def indices(self, policy: Mapping[str, Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Per-layer positions of the policy's weight and activation bits along axes 1 and 2."""
        unknown = [name for name in policy if name not in self._layer_pos]
        if unknown:
            raise UserError(f"policy names layer {unknown[0]!r}, which the cost table (model) does not have")
        w_idx = np.empty(len(self.layer_names), dtype=np.intp)
        a_idx = np.empty(len(self.layer_names), dtype=np.intp)
        for i, name in enumerate(self.layer_names):
            try:
                w, a = policy[name]
            except KeyError:
                raise UserError(
                    f"policy has no bits for layer {name!r}: give every quantizable layer a [w, a] pair"
                ) from None
            w_idx[i], a_idx[i] = self.bit_index(w), self.bit_index(a)
        return w_idx, a_idx

    def lookup(self, policy: Mapping[str, Sequence[int]], metric: str) -> np.ndarray:
        """Per-layer values of ``metric`` under ``policy``; NaN where a measured table has no value."""
        w_idx, a_idx = self.indices(policy)
        return self.metric(metric)[np.arange(len(self.layer_names)), w_idx, a_idx]

    def per_layer(self, policy: Mapping[str, Sequence[int]], metric: str) -> np.ndarray:
        """Per-layer values of ``metric`` under ``policy``; a value the table lacks is a :class:`UserError`."""
        values = self.lookup(policy, metric)
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            if not self.defines(metric):
                raise UserError(
                    f"hardware preset {self.preset!r} gives no {metric} for this model (its table lacks it); "
                    f"choose hardware.metric among {', '.join(m for m in METRICS if self.defines(m))}"
                )
            name = self.layer_names[bad[0]]
            w, a = policy[name]
            finite = np.isfinite(self.metric(metric)[bad[0]])
            w_measured = [self.bits[i] for i in np.flatnonzero(finite.any(axis=1))]
            a_measured = [self.bits[j] for j in np.flatnonzero(finite.any(axis=0))]
            raise UserError(
                f"hardware preset {self.preset!r} has no {metric} for layer {name!r} at W{w}A{a}; its table "
                f"measures w_bits {w_measured} and a_bits {a_measured}: restrict quantization.weight_bits / "
                "activation_bits to those"
            )
        return values

    def total(self, policy: Mapping[str, Sequence[int]], metric: str) -> float:
        """The policy's whole-model ``metric``, exactly rounded (so any order of adding the layers agrees)."""
        return math.fsum(self.per_layer(policy, metric).tolist())

    def totals(self, policy: Mapping[str, Sequence[int]]) -> dict[str, float]:
        """All four metrics; NaN for a metric this table does not define."""
        return self.totals_and_ratios(policy)[0]

    def ratios(self, policy: Mapping[str, Sequence[int]]) -> dict[str, float]:
        """All four metrics as fractions of W8A8; NaN for a metric this table does not define."""
        return self.totals_and_ratios(policy)[1]

    def totals_and_ratios(self, policy: Mapping[str, Sequence[int]]) -> tuple[dict[str, float], dict[str, float]]:
        """:meth:`totals` and :meth:`ratios` together, as a search prices every episode: exactly rounded sums of
        plain lists looked up once per layer, with the references computed once per table (on tables this small,
        NumPy calls cost more than the lookups they replace)."""
        tables, references = self._plain()
        unknown = [name for name in policy if name not in self._layer_pos]
        if unknown:
            raise UserError(f"policy names layer {unknown[0]!r}, which the cost table (model) does not have")
        missing = [name for name in self.layer_names if name not in policy]
        if missing:
            raise UserError(f"policy has no bits for layer {missing[0]!r}: give every quantizable layer a [w, a] pair")
        bit_index = self.bit_index
        positions = [(bit_index(w), bit_index(a)) for w, a in (policy[name] for name in self.layer_names)]
        totals, ratios = {}, {}
        for m in METRICS:
            table = tables.get(m)
            if table is None:
                totals[m] = ratios[m] = math.nan
                continue
            total = math.fsum(table[i][w][a] for i, (w, a) in enumerate(positions))
            if not math.isfinite(total):
                self.per_layer(policy, m)  # raises the table's explanation of the missing value
            totals[m], ratios[m] = total, total / references[m]
        return totals, ratios

    def _plain(self) -> tuple[dict[str, list], dict[str, float]]:
        """The defined metrics' tables as nested lists, and their W8A8 references; built on first use."""
        if self._plain_cache is None:
            defined = [m for m in METRICS if self.defines(m)]
            plain = ({m: self.metric(m).tolist() for m in defined}, {m: self.reference(m) for m in defined})
            object.__setattr__(self, "_plain_cache", plain)
        return self._plain_cache

    def reference_policy(self) -> dict[str, tuple[int, int]]:
        return {name: self.reference_bits for name in self.layer_names}

    def reference(self, metric: str) -> float:
        """The total of ``metric`` at :attr:`reference_bits` (W8A8 by default), the denominator of every budget."""
        return self.total(self.reference_policy(), metric)

    def memory_bound(self, policy: Mapping[str, Sequence[int]]) -> np.ndarray:
        """Per-layer flags: True where the layer is memory-bound under ``policy``."""
        w_idx, a_idx = self.indices(policy)
        return self.memory_bound_table[np.arange(len(self.layer_names)), w_idx, a_idx]
