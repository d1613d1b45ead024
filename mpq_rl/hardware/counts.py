"""Pure counts: BOPs and model size, the hardware-independent proxies.

- BOPs = MACs * b_w * b_a per sample (HAWQ-V3; AIMET's BitOps). The ``bops`` preset's latency is BOPs over a
  nominal ``bit_ops_per_s`` (a device that is never memory-bound) and its energy the per-operation model of
  ``energy.py``, compute only.
- Size = weights * b_w + biases at 32 bits. The ``size`` preset's latency is the weight bits over a nominal
  ``dram_bits_per_s`` (a device that only streams weights) and its energy those bits at ``dram_pj_per_bit``.

The nominal rates only scale the tables; budgets are fractions of W8A8, so they cancel out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mpq_rl.hardware.energy import QTOOLS_DRAM_PJ_PER_BIT, mac_pj
from mpq_rl.hardware.roofline import BIAS_BITS, LayerCosts
from mpq_rl.hardware.shapes import LayerShapes


def bops(shapes: LayerShapes, w_bits: np.ndarray, a_bits: np.ndarray) -> np.ndarray:
    """Bit operations per sample, ``[L, w, a]`` (HAWQ-V3)."""
    return shapes.macs * w_bits * a_bits


def size_bits(shapes: LayerShapes, w_bits: np.ndarray, a_bits: np.ndarray) -> np.ndarray:
    """Bits of stored parameters, ``[L, w, a]`` (constant along ``a``)."""
    shape = np.broadcast_shapes(shapes.macs.shape, np.shape(w_bits), np.shape(a_bits))
    return np.broadcast_to(shapes.weights * w_bits + shapes.biases * BIAS_BITS, shape).copy()


def _never_memory_bound(values: np.ndarray) -> np.ndarray:
    return np.zeros(values.shape, dtype=bool)


@dataclass(frozen=True)
class BopsCount:
    """Cost proportional to BOPs: an ideal compute-bound device."""

    batch_size: int = 1
    bit_ops_per_s: float = 1e15

    def cost(self, shapes: LayerShapes, w_bits: np.ndarray, a_bits: np.ndarray) -> LayerCosts:
        count = self.batch_size * bops(shapes, w_bits, a_bits)
        energy_pj = self.batch_size * shapes.macs * mac_pj(w_bits, a_bits, shapes.reduction)
        return LayerCosts(count / self.bit_ops_per_s, energy_pj * 1e-12, _never_memory_bound(count))


@dataclass(frozen=True)
class SizeCount:
    """Cost proportional to the weight bits: an ideal device that only streams weights."""

    dram_bits_per_s: float = 1e11
    dram_pj_per_bit: float = QTOOLS_DRAM_PJ_PER_BIT

    def cost(self, shapes: LayerShapes, w_bits: np.ndarray, a_bits: np.ndarray) -> LayerCosts:
        count = size_bits(shapes, w_bits, a_bits)
        return LayerCosts(
            count / self.dram_bits_per_s, count * self.dram_pj_per_bit * 1e-12, _never_memory_bound(count)
        )
