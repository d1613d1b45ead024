"""Bit-serial accelerators: BISMO, Stripes and Loom as parameter sets of one matrix engine.

The engine multiplies an ``M x K`` activation matrix by a ``K x N`` weight matrix on a ``Dm x Dk x Dn`` array
(BISMO's notation, Umuroglu et al., FPL 2018, EECS-NTNU/bismo), with ``M = batch * positions``, ``K = IC / groups
* K^2`` and ``N = OC``. An operand that is processed bit-serially costs one pass per bit; a bit-parallel one costs
``ceil(b / parallel_bits)`` passes::

    cycles = ceil(M / Dm) * ceil(N / Dn) * ceil(K / Dk) * passes(b_w) * passes(b_a)

- BISMO: both operands serial in every layer (workload ``2 * M * K * N * b_w * b_a`` binary ops); PYNQ-Z1 8x256x8
  at 200 MHz, Ultra96 10x256x10 at 300 MHz. HAQ's edge and cloud tables came from BISMO-like hardware; following
  HAQ (CVPR 2019, Sec. 4) the edge-style preset runs batch 1 and the cloud-style one batch 16.
- Stripes (Judd et al., MICRO 2016): activations serial, 16-bit weights in parallel, so time ~ b_a / 16.
- Loom (Sharify et al., DAC 2018): both serial in convolutions (time ~ b_w * b_a / 256); fully connected layers
  serial in weights only (time ~ b_w / 16).

A bit-parallel operand is stored and multiplied at its ``parallel_bits`` container. Grouped and depthwise
convolutions are assumed to run at full utilization, ``ceil(B * MACs * passes / (Dm * Dk * Dn))`` (none of the
three designs maps them; HAQ's measured table shows them memory-bound). DRAM traffic and the roofline come from
``roofline.py``; outputs are written at the layer's activation width unless ``output_bits`` is set. Energy is
the per-operation model of ``energy.py`` for integer arithmetic at the stored widths (fixed-point hardware: 16 and
32 bits run as 16- and 32-bit integer passes, our assumption). BISMO's DRAM bandwidths and buffer sizes are our
estimates for each board; Stripes and Loom keep the network in DaDianNao's on-chip eDRAM.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from mpq_rl.errors import UserError
from mpq_rl.hardware.energy import HOROWITZ_SRAM_32KB_PJ_PER_BIT, QTOOLS_DRAM_PJ_PER_BIT, int_mac_pj, memory_pj
from mpq_rl.hardware.roofline import LayerCosts, dram_bits, roofline
from mpq_rl.hardware.shapes import LayerShapes

SERIAL_MODES = ("both", "weights", "activations")
KB_BITS = 8 * 1024


@dataclass(frozen=True)
class BitSerial:
    """A bit-serial matrix engine; ``conv_serial`` / ``fc_serial`` say which operands are serial per layer kind."""

    rows: int
    depth: int
    cols: int
    clock_hz: float
    dram_bits_per_cycle: float
    batch_size: int = 1
    conv_serial: str = "both"
    fc_serial: str = "both"
    parallel_bits: int = 16
    output_bits: int = 0
    input_sram_kb: int = 64
    weight_sram_kb: int = 64
    sram_pj_per_bit: float = HOROWITZ_SRAM_32KB_PJ_PER_BIT
    dram_pj_per_bit: float = QTOOLS_DRAM_PJ_PER_BIT
    sram_operand_reuse: float = 16.0
    layer_overhead_s: float = 0.0

    def validate(self) -> None:
        for key in ("conv_serial", "fc_serial"):
            if getattr(self, key) not in SERIAL_MODES:
                raise UserError(
                    f"hardware.overrides.{key} must be one of {list(SERIAL_MODES)}, got {getattr(self, key)!r}"
                )
        if min(self.rows, self.depth, self.cols, self.parallel_bits) < 1:
            raise UserError("hardware.overrides rows, depth, cols and parallel_bits must be at least 1")

    def _operand_bits(self, shapes: LayerShapes, bits: np.ndarray, operand: str) -> tuple[np.ndarray, np.ndarray]:
        """Passes and stored width of one operand: serial ones take ``bits`` passes, parallel ones a container."""
        serial = np.where(
            shapes.linear,
            self.fc_serial in ("both", operand),
            self.conv_serial in ("both", operand),
        )
        container = np.ceil(bits / self.parallel_bits)
        return np.where(serial, bits, container), np.where(serial, bits, container * self.parallel_bits)

    def cost(self, shapes: LayerShapes, w_bits: np.ndarray, a_bits: np.ndarray) -> LayerCosts:
        w_passes, w_stored = self._operand_bits(shapes, w_bits, "weights")
        a_passes, a_stored = self._operand_bits(shapes, a_bits, "activations")
        batch = self.batch_size
        dense = (
            np.ceil(batch * shapes.positions / self.rows)
            * np.ceil(shapes.out_channels / self.cols)
            * np.ceil(shapes.reduction / self.depth)
        )
        grouped = batch * shapes.macs / (self.rows * self.depth * self.cols)
        cycles = np.ceil(np.where(shapes.grouped, grouped, dense) * w_passes * a_passes)
        out_bits = a_stored if self.output_bits == 0 else np.float64(self.output_bits)
        traffic = dram_bits(
            shapes,
            w_stored,
            a_stored,
            out_bits,
            batch,
            weight_buffer_bits=self.weight_sram_kb * KB_BITS,
            input_buffer_bits=self.input_sram_kb * KB_BITS,
        )
        latency, memory_bound = roofline(
            cycles / self.clock_hz, traffic / (self.dram_bits_per_cycle * self.clock_hz), self.layer_overhead_s
        )
        macs = batch * shapes.macs
        energy_pj = macs * int_mac_pj(w_stored, a_stored, shapes.reduction) + memory_pj(
            macs, w_stored, a_stored, traffic, self.sram_operand_reuse, self.sram_pj_per_bit, self.dram_pj_per_bit
        )
        return LayerCosts(latency, energy_pj * 1e-12, memory_bound)


BISMO_PYNQ = BitSerial(rows=8, depth=256, cols=8, clock_hz=200e6, dram_bits_per_cycle=64, batch_size=1)
"""BISMO on PYNQ-Z1 (6.5 binary TOPS); edge style, batch 1. 64 bits/cycle DRAM is our estimate."""

BISMO_ULTRA96 = BitSerial(rows=10, depth=256, cols=10, clock_hz=300e6, dram_bits_per_cycle=128, batch_size=16)
"""BISMO on Ultra96 (15 binary TOPS); cloud style as in HAQ's released table, batch 16."""

DADIANNAO_EDRAM_BITS_PER_CYCLE = 16 * 4096
"""Stripes and Loom build on DaDianNao (Chen et al., MICRO 2014): weights stay in on-chip eDRAM, 16 tiles each
reading 4096 bits per cycle. Their "DRAM" below is that eDRAM (32 MB weights, 4 MB activations)."""
HOROWITZ_SRAM_1MB_PJ_PER_BIT = 100.0 / 64
"""Horowitz: a 64-bit read from a 1 MB SRAM costs 100 pJ; our estimate for the eDRAM."""

STRIPES = BitSerial(
    rows=16,
    depth=16,
    cols=256,
    clock_hz=980e6,
    dram_bits_per_cycle=DADIANNAO_EDRAM_BITS_PER_CYCLE,
    conv_serial="activations",
    fc_serial="activations",
    input_sram_kb=4 * 1024,
    weight_sram_kb=32 * 1024,
    dram_pj_per_bit=HOROWITZ_SRAM_1MB_PJ_PER_BIT,
)
"""Stripes: 16 windows x 16 inputs x (16 tiles x 16 filters), serial activations, 16-bit weights."""

LOOM = replace(STRIPES, rows=256, conv_serial="both", fc_serial="weights")
"""Loom: Stripes' DaDianNao platform with 256 rows, both operands serial in convolutions, weights only in fully
connected layers."""
