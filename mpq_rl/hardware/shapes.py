"""The numbers of a layer table that cost models read, as broadcastable numpy columns.

Every column has shape ``[L, 1, 1]`` so that a model can combine it with weight bits shaped ``[1, B, 1]`` and
activation bits shaped ``[1, 1, B]`` and get a ``[layer, w_bits, a_bits]`` cost table in one numpy expression.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mpq_rl.workloads.layers import LayerTable

BITS: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8, 16, 32)
"""Bit-widths along the cost tables' w and a axes; 16 and 32 mean floating point (see
``quantization.bits.FLOAT_BITS``)."""

FLOAT_MIN_BITS = 16
"""Operands this wide or wider are floating point."""


def bit_grid(bits: tuple[int, ...] = BITS) -> tuple[np.ndarray, np.ndarray]:
    """Weight bits shaped ``[1, B, 1]`` and activation bits shaped ``[1, 1, B]`` (float64)."""
    values = np.asarray(bits, dtype=np.float64)
    return values[None, :, None], values[None, None, :]


def _column(values: list[float]) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)[:, None, None]


@dataclass(frozen=True, eq=False)
class LayerShapes:
    """Per-layer sizes (per sample, summed over calls) as ``[L, 1, 1]`` float columns.

    ``positions`` is the number of output positions per output channel (pixels, or tokens of a sequence), so a
    dense layer is a matrix product of ``positions x reduction`` by ``reduction x out_channels``.
    """

    names: tuple[str, ...]
    kinds: tuple[str, ...]
    macs: np.ndarray
    weights: np.ndarray
    biases: np.ndarray
    inputs: np.ndarray
    outputs: np.ndarray
    out_channels: np.ndarray
    positions: np.ndarray
    in_per_group: np.ndarray
    taps: np.ndarray
    reduction: np.ndarray
    grouped: np.ndarray
    linear: np.ndarray

    @classmethod
    def from_table(cls, layers: LayerTable) -> LayerShapes:
        rows = list(layers)
        weights = [math.prod(layer.weight_shape) for layer in rows]
        return cls(
            names=tuple(layer.name for layer in rows),
            kinds=tuple(layer.kind for layer in rows),
            macs=_column([layer.macs for layer in rows]),
            weights=_column(weights),
            biases=_column([layer.params - w for layer, w in zip(rows, weights, strict=True)]),
            inputs=_column([layer.input_elements for layer in rows]),
            outputs=_column([layer.output_elements for layer in rows]),
            out_channels=_column([layer.out_channels for layer in rows]),
            positions=_column([layer.output_elements / layer.out_channels for layer in rows]),
            in_per_group=_column([layer.in_channels // layer.groups for layer in rows]),
            taps=_column([layer.kernel_size for layer in rows]),
            reduction=_column([layer.reduction for layer in rows]),
            grouped=np.asarray([layer.groups > 1 for layer in rows])[:, None, None],
            linear=np.asarray([layer.is_linear for layer in rows])[:, None, None],
        )

    def __len__(self) -> int:
        return len(self.names)
