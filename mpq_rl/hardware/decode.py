"""Language-model inference on a device: decode is bound by the weight bytes moved per token, prefill by compute.

Generating one token multiplies every weight once per sequence in the batch, so a decode step streams all weights
from memory once (at their stored bits per weight, block scales included) and does ``2 * batch * weights`` FLOPs;
on every device below the memory term wins at small batches, which is why llama.cpp users count bits per weight. A
prompt of ``P`` tokens is processed in one pass that reuses each weight ``P`` times, so prefill is bound by compute.
Per linear layer, with ``W`` weights, ``b_w`` stored bits per weight and ``b_a`` activation bits:

* ``decode_s = max(W * b_w / (bandwidth * bandwidth_utilization), 2 * B * W / (peak * compute_utilization))``,
  plus the layer's input and output vectors (``B * (in + out) * b_a`` bits) in the memory term;
* ``prefill_s = max(W * b_w / (bandwidth * ...), 2 * B * P * W / (peak * compute_utilization))``;
* latency = ``prefill_s + new_tokens * decode_s`` (by default one decode step: seconds per generated token).

``w_bits`` are the stored bits per weight of the layer's format (4.5 for GGUF Q4_0, which stores an F16 scale per
32 weights). Weights are dequantized in registers, so the compute peak is the FP16 one (FP32 on CPUs) whatever the
weight format. Not modelled: attention over the KV cache (it grows with context; at short contexts the weights
dominate), the embedding lookup (one row per token), kernel launch overheads and the dequantization work itself.
Energy is the DRAM bits moved at ``dram_pj_per_bit`` plus the MACs at the FP16 cost of ``energy.py``. Device
figures and their sources are in docs/hardware.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mpq_rl.hardware.energy import QTOOLS_DRAM_PJ_PER_BIT, mac_pj
from mpq_rl.hardware.roofline import BIAS_BITS, LayerCosts, roofline
from mpq_rl.hardware.shapes import LayerShapes

FLOAT_COMPUTE_BITS = 16
"""Operand width of the dequantized weights and the activations in the multiply (FP16)."""


@dataclass(frozen=True)
class DecodeDevice:
    """A device running a causal LM token by token; bandwidth in GB/s, peak in TFLOPS (one MAC = 2 FLOPs)."""

    dram_gb_per_s: float
    peak_tflops: float
    batch_size: int = 1
    prompt_tokens: int = 0
    new_tokens: int = 1
    bandwidth_utilization: float = 0.7
    compute_utilization: float = 0.5
    dram_pj_per_bit: float = QTOOLS_DRAM_PJ_PER_BIT

    def cost(self, shapes: LayerShapes, w_bits: np.ndarray, a_bits: np.ndarray) -> LayerCosts:
        per_token_inputs = shapes.inputs / shapes.positions
        weight_bits = shapes.weights * w_bits + shapes.biases * BIAS_BITS
        vector_bits = self.batch_size * (per_token_inputs + shapes.out_channels) * a_bits
        bits_per_s = self.dram_gb_per_s * 8e9 * self.bandwidth_utilization
        flops_per_s = self.peak_tflops * 1e12 * self.compute_utilization
        decode_s, memory_bound = roofline(
            2 * self.batch_size * shapes.weights / flops_per_s, (weight_bits + vector_bits) / bits_per_s
        )
        prefill_flops = 2 * self.batch_size * self.prompt_tokens * shapes.weights
        prefill_s, _ = roofline(
            prefill_flops / flops_per_s, (weight_bits + self.prompt_tokens * vector_bits) / bits_per_s
        )
        prefill_s = np.where(self.prompt_tokens > 0, prefill_s, 0.0)
        latency = prefill_s + self.new_tokens * decode_s
        tokens = self.batch_size * (self.prompt_tokens + self.new_tokens)
        steps = self.new_tokens + (self.prompt_tokens > 0)
        moved_bits = steps * weight_bits + (self.prompt_tokens + self.new_tokens) * vector_bits
        macs = tokens * shapes.weights
        energy_pj = moved_bits * self.dram_pj_per_bit + macs * mac_pj(
            np.float64(FLOAT_COMPUTE_BITS), np.float64(FLOAT_COMPUTE_BITS), shapes.reduction
        )
        return LayerCosts(latency, energy_pj * 1e-12, np.broadcast_to(memory_bound, latency.shape).copy())


A100_DECODE = DecodeDevice(dram_gb_per_s=1555, peak_tflops=312)
RTX4090_DECODE = DecodeDevice(dram_gb_per_s=1008, peak_tflops=165.2)
APPLE_M2_DECODE = DecodeDevice(dram_gb_per_s=100, peak_tflops=3.6)
LAPTOP_DDR5_DECODE = DecodeDevice(dram_gb_per_s=89.6, peak_tflops=1.02)
