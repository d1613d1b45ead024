"""The roofline law shared by the analytic presets, and the DRAM traffic it reads.

Latency is ``max(compute time, DRAM traffic / bandwidth) + fixed overhead`` (the roofline of REFERENCES.md); a
layer is memory-bound where the memory term is the larger one.

DRAM traffic moves weights (biases at 32 bits) once per batch, input activations and outputs once per batch, and
re-reads whichever operand does not fit on chip: with the weights split into tiles that fit the weight buffer every
input is streamed once per weight tile, or the other way round, whichever moves fewer bits (a two-level loop
tiling in the spirit of the Bit Fusion simulator's, hsharma35/bitfusion ``src/simulator/loop_stack.py``, without
its search over tile shapes). Grouped convolutions read each input once, since a weight tile only needs the inputs
of its own groups.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mpq_rl.hardware.shapes import LayerShapes

BIAS_BITS = 32


def dram_bits(
    shapes: LayerShapes,
    w_bits: np.ndarray,
    a_bits: np.ndarray,
    out_bits: np.ndarray,
    batch_size: int,
    weight_buffer_bits: float,
    input_buffer_bits: float,
) -> np.ndarray:
    """Bits moved between DRAM and the chip for one batch, broadcast to ``[L, w, a]``."""
    weights = shapes.weights * w_bits + shapes.biases * BIAS_BITS
    inputs = batch_size * shapes.inputs * a_bits
    outputs = batch_size * shapes.outputs * out_bits
    weight_tiles = np.where(shapes.grouped, 1.0, np.ceil(weights / weight_buffer_bits))
    input_tiles = np.where(shapes.grouped, 1.0, np.ceil(inputs / input_buffer_bits))
    stream_inputs = weights + inputs * weight_tiles
    stream_weights = inputs + weights * input_tiles
    return np.minimum(stream_inputs, stream_weights) + outputs


@dataclass(frozen=True, eq=False)
class LayerCosts:
    """What a cost model computes: ``[L, w, a]`` latency (s), energy (J) and where the memory term wins;
    ``table_units`` when latency and energy are a measured table's own numbers, in whatever unit it was measured."""

    latency: np.ndarray
    energy: np.ndarray
    memory_bound: np.ndarray
    table_units: bool = False


def roofline(compute_s: np.ndarray, memory_s: np.ndarray, overhead_s: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Latency ``max(compute, memory) + overhead`` and the memory-bound mask."""
    compute_s, memory_s = np.broadcast_arrays(compute_s, memory_s)
    return np.maximum(compute_s, memory_s) + overhead_s, memory_s > compute_s
