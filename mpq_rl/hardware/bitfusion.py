"""Bit Fusion (Sharma et al., ISCA 2018): an array of fusion units built from 2x2-bit BitBricks.

Compute follows the simulator hsharma35/bitfusion (``src/simulator/accelerator.py``). A fusion unit multiplies one
8x8 pair per cycle, or splits into more products when both operands are narrow; per operand the speed-up is
``floor(8 / max(b, 2))`` (4 at 1-2 bits, 2 at 3-4, 1 at 5-8), and the two factors multiply (16x at 2x2). On an
``N x M`` array (N rows along the reduction, M columns along output channels) a dense layer takes::

    cycles = B * ceil(OC / M) * positions * K^2 * ceil((IC / groups) / (N * factor_w * factor_a))

with ``positions`` the output pixels (or tokens) per output channel. The simulator also offers an im2col mapping
that unrolls the kernel into the reduction, ``B * positions * ceil(OC / M) * ceil(K^2 * IC / (N * factor))``,
which keeps the array busy when a layer has few input channels; ``mapping`` picks "channels" (the simulator's
default), "im2col", or "best" (default: per layer and bit pair, the faster of the two, as a compiler would).
Assumptions beyond the simulator, which
handles neither: 16-bit operands take 4x the 8x8 cycles (factor 1/2 per operand) and 32-bit ones 16x (1/4); a
grouped or depthwise convolution runs at full array utilization, ``ceil(B * MACs / (N * M * factor))``, so such
layers come out memory-bound, as they are in HAQ's measured table.

Latency is the roofline of ``roofline.py`` with the array's DRAM bandwidth; energy is the core energy per active
cycle (235.1 pJ per cycle for the 512-unit 16x32 array, 0.459 pJ per fusion unit) plus SRAM and DRAM energy per
bit (Bit Fusion: SRAM 0.02-0.11 pJ/bit, DRAM 15 pJ/bit). Outputs are requantized and written at the layer's
activation width by default (``output_bits: 0``), as a mixed-precision pipeline stores them for the next layer;
``output_bits: 32`` reproduces the simulator, which writes 32-bit outputs and leaves small layers memory-bound.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mpq_rl.errors import UserError
from mpq_rl.hardware.energy import memory_pj
from mpq_rl.hardware.roofline import LayerCosts, dram_bits, roofline
from mpq_rl.hardware.shapes import LayerShapes

KB_BITS = 8 * 1024
MAPPINGS = ("best", "channels", "im2col")


@dataclass(frozen=True)
class FusionArray:
    """One shipped array configuration of the Bit Fusion simulator (both at 500 MHz)."""

    rows: int
    cols: int
    input_sram_kb: int
    weight_sram_kb: int
    output_sram_kb: int
    dram_bits_per_cycle: int


ARRAYS: dict[str, FusionArray] = {
    "8x8": FusionArray(
        rows=8, cols=8, input_sram_kb=64, weight_sram_kb=256, output_sram_kb=16, dram_bits_per_cycle=128
    ),
    "16x32": FusionArray(
        rows=16, cols=32, input_sram_kb=32, weight_sram_kb=64, output_sram_kb=16, dram_bits_per_cycle=192
    ),
}


def fusion_factor(bits: np.ndarray) -> np.ndarray:
    """Per-operand speed-up over 8 bits: 4 at 2 bits, 2 at 3-4, 1 at 5-8, 1/2 at 16, 1/4 at 32."""
    bits = np.asarray(bits, dtype=np.float64)
    return np.where(bits <= 8, np.floor(8.0 / np.maximum(bits, 2.0)), 8.0 / bits)


@dataclass(frozen=True)
class BitFusion:
    """Bit Fusion at its published settings; ``array`` picks "16x32" (the paper's 512 units) or "8x8".

    ``dram_bits_per_cycle``, ``input_sram_kb`` and ``weight_sram_kb`` default to the chosen array's values.
    """

    array: str = "16x32"
    batch_size: int = 16
    clock_hz: float = 500e6
    core_pj_per_unit_cycle: float = 235.1 / 512
    sram_pj_per_bit: float = 0.1
    dram_pj_per_bit: float = 15.0
    sram_operand_reuse: float = 16.0
    output_bits: int = 0
    mapping: str = "best"
    dram_bits_per_cycle: int | None = None
    input_sram_kb: int | None = None
    weight_sram_kb: int | None = None

    def validate(self) -> None:
        if self.array not in ARRAYS:
            raise UserError(f"hardware.overrides.array must be one of {list(ARRAYS)}, got {self.array!r}")
        if self.mapping not in MAPPINGS:
            raise UserError(f"hardware.overrides.mapping must be one of {list(MAPPINGS)}, got {self.mapping!r}")

    @property
    def config(self) -> FusionArray:
        return ARRAYS[self.array]

    def cycles(self, shapes: LayerShapes, w_bits: np.ndarray, a_bits: np.ndarray) -> np.ndarray:
        """Compute cycles of the array for one batch (the simulator's loop nest, above)."""
        rows, cols = self.config.rows, self.config.cols
        factor = fusion_factor(w_bits) * fusion_factor(a_bits)
        per_position = self.batch_size * shapes.positions * np.ceil(shapes.out_channels / cols)
        channels = per_position * shapes.taps * np.ceil(shapes.in_per_group / (rows * factor))
        im2col = per_position * np.ceil(shapes.taps * shapes.in_per_group / (rows * factor))
        dense = {"channels": channels, "im2col": im2col, "best": np.minimum(channels, im2col)}[self.mapping]
        grouped = np.ceil(self.batch_size * shapes.macs / (rows * cols * factor))
        return np.where(shapes.grouped, grouped, dense)

    def _or_array(self, name: str) -> float:
        """An override's value, or the chosen array's when it is not given (0 is a value, refused as such)."""
        value = getattr(self, name)
        return getattr(self.config, name) if value is None else value

    def cost(self, shapes: LayerShapes, w_bits: np.ndarray, a_bits: np.ndarray) -> LayerCosts:
        config = self.config
        cycles = self.cycles(shapes, w_bits, a_bits)
        traffic = dram_bits(
            shapes,
            w_bits,
            a_bits,
            a_bits if self.output_bits == 0 else np.float64(self.output_bits),
            self.batch_size,
            weight_buffer_bits=self._or_array("weight_sram_kb") * KB_BITS,
            input_buffer_bits=self._or_array("input_sram_kb") * KB_BITS,
        )
        bandwidth = self._or_array("dram_bits_per_cycle") * self.clock_hz
        latency, memory_bound = roofline(cycles / self.clock_hz, traffic / bandwidth)
        energy_pj = cycles * self.core_pj_per_unit_cycle * config.rows * config.cols + memory_pj(
            self.batch_size * shapes.macs,
            w_bits,
            a_bits,
            traffic,
            self.sram_operand_reuse,
            self.sram_pj_per_bit,
            self.dram_pj_per_bit,
        )
        return LayerCosts(latency, energy_pj * 1e-12, memory_bound)
