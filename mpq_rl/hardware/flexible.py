"""A format-flexible accelerator: Bit Fusion's array behind per-format operand decoders, in the spirit of ANT.

ANT (Guo et al., MICRO 2022) builds its simulator on Bit Fusion's (clevercool/ANT-Quantization ``ant_simulator``):
fp and flint operands are decoded at the array's edge into an exponent and an integer mantissa, and the fused
integer array multiplies them at the operand's bit-width, shifting products by the exponents. This model prices
that design on top of :class:`~mpq_rl.hardware.bitfusion.BitFusion` (same cycles, roofline and memory energy), with
the bits of each precision code (:mod:`mpq_rl.quantization.formats`) and these additions, every number a parameter
because
none is measured here:

* **Area**: the chip carries an fp and a flint decoder per operand lane; at the area of the integer array it fits
  fewer fusion units, so every layer, integer ones too, takes ``1 + fp_decoder_area_fraction +
  flint_decoder_area_fraction`` times Bit Fusion's cycles.
* **Decoding energy**: each operand read from SRAM (``B * MACs * 2 / sram_operand_reuse`` reads) is decoded once,
  at ``<format>_decoder_pj_per_bit`` per operand bit (default: one adder bit per operand bit, a leading-one detector
  and shifter of the operand's width); integers pass undecoded.
* **Shift-and-add**: a product with an fp or flint operand spends ``float_mac_overhead`` more core energy (exponent
  addition and alignment).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from mpq_rl.hardware.bitfusion import BitFusion
from mpq_rl.hardware.energy import ADD_PJ_PER_BIT
from mpq_rl.hardware.roofline import LayerCosts
from mpq_rl.hardware.shapes import LayerShapes
from mpq_rl.quantization.formats import FORMAT_CODE_STRIDE


@dataclass(frozen=True)
class FormatFlexible(BitFusion):
    """Bit Fusion with fp and flint decoders; ``cost`` takes precision codes, not bare bits."""

    reads_formats: ClassVar[bool] = True
    fp_decoder_area_fraction: float = 0.03
    flint_decoder_area_fraction: float = 0.03
    fp_decoder_pj_per_bit: float = ADD_PJ_PER_BIT
    flint_decoder_pj_per_bit: float = ADD_PJ_PER_BIT
    float_mac_overhead: float = 0.25

    def cycles(self, shapes: LayerShapes, w_bits: np.ndarray, a_bits: np.ndarray) -> np.ndarray:
        area = 1.0 + self.fp_decoder_area_fraction + self.flint_decoder_area_fraction
        return super().cycles(shapes, w_bits, a_bits) * area

    def cost(self, shapes: LayerShapes, w_bits: np.ndarray, a_bits: np.ndarray) -> LayerCosts:
        w_format, w_width = np.divmod(w_bits, FORMAT_CODE_STRIDE)
        a_format, a_width = np.divmod(a_bits, FORMAT_CODE_STRIDE)
        base = super().cost(shapes, w_width, a_width)
        decode_pj = np.array([0.0, self.fp_decoder_pj_per_bit, self.flint_decoder_pj_per_bit])  # FORMAT_NAMES order
        w_index, a_index = w_format.astype(np.intp), a_format.astype(np.intp)
        reads = self.batch_size * shapes.macs / self.sram_operand_reuse
        decoding = reads * (decode_pj[w_index] * w_width + decode_pj[a_index] * a_width)
        core = self.cycles(shapes, w_width, a_width) * self.core_pj_per_unit_cycle * self.config.rows * self.config.cols
        shifting = np.where((w_index > 0) | (a_index > 0), self.float_mac_overhead * core, 0.0)
        return LayerCosts(base.latency, base.energy + (decoding + shifting) * 1e-12, base.memory_bound)
