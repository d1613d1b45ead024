"""GPU tensor cores: a step function by mode with a memory roofline.

A layer runs in the narrowest mode that holds both operands: INT4 (<= 4 bits), INT8 (<= 8), FP16 (16) or FP32
(32, on CUDA cores), and its operands are stored in that container width. Compute time is
``B * MACs / (peak MAC/s of the mode * utilization)``; the memory term is DRAM traffic (``roofline.py``, L2 cache
as the on-chip buffer) over the memory bandwidth; a fixed kernel launch overhead is added to every layer.

Peaks (NVIDIA datasheets): T4 130 TOPS INT8, 260 INT4, 65 TFLOPS FP16, 8.1 FP32, 320 GB/s; A100 624 INT8, 1248 INT4,
312 FP16, 19.5 FP32, 1555 GB/s. HAWQ-V3 (Yao et al., ICML 2021) measured on T4 that layers whose reduction
dimension is <= 64 gain nothing from INT4: such layers run INT4 operands at the INT8 rate
(``int4_no_gain_max_reduction``; 0 turns the rule off, as for A100, where it was not measured). Tensor cores do
not run grouped or depthwise convolutions; those run at ``grouped_utilization`` of the mode's peak (our estimate).
Measured speed-ups are far below the peak ratios (HAWQ-V3: INT4 over INT8 1.32-2.03x per layer), hence the
roofline and the overhead. Energy is the per-operation model of ``energy.py`` at the container widths.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mpq_rl.hardware.energy import QTOOLS_DRAM_PJ_PER_BIT, mac_pj, memory_pj
from mpq_rl.hardware.roofline import LayerCosts, dram_bits, roofline
from mpq_rl.hardware.shapes import LayerShapes

MB_BITS = 8 * 1024 * 1024


def container_bits(bits: np.ndarray) -> np.ndarray:
    """The tensor-core operand width that holds ``bits``: 4, 8, 16 or 32."""
    bits = np.asarray(bits, dtype=np.float64)
    return np.select([bits <= 4, bits <= 8, bits <= 16], [4.0, 8.0, 16.0], 32.0)


@dataclass(frozen=True)
class TensorCoreGPU:
    """A GPU priced by tensor-core mode; peaks in tera-operations per second (one MAC = 2 operations)."""

    int4_tops: float
    int8_tops: float
    fp16_tflops: float
    fp32_tflops: float
    dram_gb_per_s: float
    l2_cache_mb: float
    int4_no_gain_max_reduction: int = 0
    batch_size: int = 16
    utilization: float = 0.5
    grouped_utilization: float = 0.05
    launch_overhead_s: float = 3e-6
    output_bits: int = 0
    sram_pj_per_bit: float = 20.0 / 64
    dram_pj_per_bit: float = QTOOLS_DRAM_PJ_PER_BIT
    sram_operand_reuse: float = 16.0

    def cost(self, shapes: LayerShapes, w_bits: np.ndarray, a_bits: np.ndarray) -> LayerCosts:
        w_stored, a_stored = container_bits(w_bits), container_bits(a_bits)
        mode = np.maximum(w_stored, a_stored)
        mode = np.where((mode == 4) & (shapes.reduction <= self.int4_no_gain_max_reduction), 8.0, mode)
        tera_ops = np.select(
            [mode == 4, mode == 8, mode == 16], [self.int4_tops, self.int8_tops, self.fp16_tflops], self.fp32_tflops
        )
        utilization = np.where(shapes.grouped, self.grouped_utilization, self.utilization)
        macs = self.batch_size * shapes.macs
        compute_s = macs / (tera_ops * 1e12 / 2 * utilization)
        out_bits = a_stored if self.output_bits == 0 else container_bits(self.output_bits)
        half_cache = self.l2_cache_mb * MB_BITS / 2
        traffic = dram_bits(shapes, w_stored, a_stored, out_bits, self.batch_size, half_cache, half_cache)
        latency, memory_bound = roofline(compute_s, traffic / (self.dram_gb_per_s * 8e9), self.launch_overhead_s)
        energy_pj = macs * mac_pj(w_stored, a_stored, shapes.reduction) + memory_pj(
            macs, w_stored, a_stored, traffic, self.sram_operand_reuse, self.sram_pj_per_bit, self.dram_pj_per_bit
        )
        return LayerCosts(latency, energy_pj * 1e-12, memory_bound)


T4 = TensorCoreGPU(
    int4_tops=260,
    int8_tops=130,
    fp16_tflops=65,
    fp32_tflops=8.1,
    dram_gb_per_s=320,
    l2_cache_mb=4,
    int4_no_gain_max_reduction=64,
)
A100 = TensorCoreGPU(
    int4_tops=1248, int8_tops=624, fp16_tflops=312, fp32_tflops=19.5, dram_gb_per_s=1555, l2_cache_mb=40
)
