"""AdaPT's analytical training speed-up model: bit-weighted multiply-accumulates of training against float32.

Each training step runs every quantizable layer's forward MACs at the layer's word length and its backward pass in
float32; float32 training runs both at 32 bits. With ``fp32 = sum(MACs * 32)`` and ``quantized = sum(MACs * wl)``
over steps and layers, the speed-up is ``2 * fp32 / (quantized + fp32)``, at most 2 (AdaPT,
``utils/analytics.py``, ``su_own``; there each layer's MACs are also scaled by its non-zero fraction and the rule's
own overhead is added, which we leave out: our weights are not sparsified and the rule's cost is not modelled).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

FLOAT_BITS = 32


@dataclass
class OpsCounter:
    """Bit-weighted MACs of the steps so far: ``fp32`` at 32 bits, ``quantized`` at each layer's word length."""

    fp32: float = 0.0
    quantized: float = 0.0

    def add_step(self, macs: Mapping[str, int], word_lengths: Mapping[str, int], samples: int) -> None:
        """One training step of ``samples`` samples; ``macs`` per sample per layer."""
        self.fp32 += samples * sum(macs.values()) * FLOAT_BITS
        self.quantized += samples * sum(macs[name] * word_lengths[name] for name in macs)

    @property
    def speedup(self) -> float:
        """``2 * fp32 / (quantized + fp32)`` (1 before any step)."""
        return 1.0 if self.fp32 == 0 else training_speedup(self.fp32, self.quantized)

    @property
    def average_bits(self) -> float:
        """The MAC-weighted mean word length over the steps so far."""
        return 0.0 if self.fp32 == 0 else FLOAT_BITS * self.quantized / self.fp32


def training_speedup(fp32_ops: float, quantized_ops: float) -> float:
    """``2 * sum(fp32 ops) / (sum(quantized ops) + sum(fp32 ops))``."""
    return 2.0 * fp32_ops / (quantized_ops + fp32_ops)
