"""The registry of hardware presets and :func:`build_cost_table`, which compiles a layer table into costs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from mpq_rl.config import REFERENCE_BITS, HardwareConfig
from mpq_rl.errors import UserError
from mpq_rl.hardware.base import CostModel, apply_overrides, parameter_names
from mpq_rl.hardware.bitfusion import BitFusion
from mpq_rl.hardware.bitserial import BISMO_PYNQ, BISMO_ULTRA96, LOOM, STRIPES
from mpq_rl.hardware.cost_table import CostTable
from mpq_rl.hardware.counts import BopsCount, SizeCount, bops, size_bits
from mpq_rl.hardware.gpu import A100, T4
from mpq_rl.hardware.lut import LookupTable
from mpq_rl.hardware.shapes import BITS, LayerShapes, bit_grid
from mpq_rl.layers import LayerTable


@dataclass(frozen=True)
class Preset:
    """A named cost model with its default parameters and a one-line description."""

    name: str
    model: Any
    summary: str

    @property
    def parameters(self) -> dict[str, Any]:
        return {key: getattr(self.model, key) for key in parameter_names(self.model)}


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("bitfusion", BitFusion(), "Bit Fusion (ISCA 2018), 16x32 fusion units at 500 MHz, batch 16"),
        Preset("bismo_pynq", BISMO_PYNQ, "BISMO bit-serial on PYNQ-Z1, 8x256x8 at 200 MHz, batch 1 (edge)"),
        Preset("bismo_ultra96", BISMO_ULTRA96, "BISMO bit-serial on Ultra96, 10x256x10 at 300 MHz, batch 16"),
        Preset("stripes", STRIPES, "Stripes (MICRO 2016): bit-serial activations, time ~ a_bits / 16"),
        Preset("loom", LOOM, "Loom (DAC 2018): convs ~ w_bits * a_bits / 256, fully connected ~ w_bits / 16"),
        Preset("t4", T4, "NVIDIA T4 tensor cores: INT4 / INT8 / FP16 modes with a 320 GB/s roofline, batch 16"),
        Preset("a100", A100, "NVIDIA A100 tensor cores: INT4 / INT8 / FP16 modes with a 1555 GB/s roofline, batch 16"),
        Preset("bops", BopsCount(), "bit operations, MACs * w_bits * a_bits (HAWQ-V3)"),
        Preset("size", SizeCount(), "model size, parameters * w_bits"),
        Preset("lut", LookupTable(), "a measured table from hardware.table (HAQ .npy, or .csv / .json rows)"),
    )
}


def resolve_model(hardware: HardwareConfig) -> CostModel:
    """The preset's cost model with ``hardware.overrides`` (and ``hardware.table``) applied."""
    preset = PRESETS.get(hardware.preset)
    if preset is None:
        raise UserError(f"unknown hardware.preset {hardware.preset!r}: choose one of {', '.join(PRESETS)}")
    overrides = dict(hardware.overrides)
    if hardware.table is not None:
        if "table" not in parameter_names(preset.model):
            raise UserError(
                f"hardware.table is only read by the 'lut' preset, not {hardware.preset!r}: "
                "remove it or set hardware.preset: lut"
            )
        overrides["table"] = hardware.table
    return apply_overrides(preset.model, overrides, hardware.preset)


def build_cost_table(
    layers: LayerTable,
    hardware: HardwareConfig,
    bits: tuple[int, ...] = BITS,
    reference_bits: tuple[int, int] = REFERENCE_BITS,
) -> CostTable:
    """Compile ``layers`` on the hardware of ``hardware`` into a :class:`CostTable` over ``bits`` x ``bits``, with
    budgets relative to ``reference_bits`` (``QuantizationConfig.reference_bits``)."""
    model = resolve_model(hardware)
    shapes = LayerShapes.from_table(layers)
    w_bits, a_bits = bit_grid(bits)
    with np.errstate(divide="ignore", invalid="ignore"):
        costs = model.cost(shapes, w_bits, a_bits)
    for metric, table in (("latency", costs.latency), ("energy", costs.energy)):
        if np.isinf(table).any() or (table < 0).any():
            raise UserError(
                f"hardware preset {hardware.preset!r} gives {'infinite' if np.isinf(table).any() else 'negative'} "
                f"{metric} with hardware.overrides {dict(hardware.overrides)}: an override is zero or out of range "
                "(e.g. clock_hz: 0); give every rate and size a positive value"
            )
    fields = {f.name for f in dataclasses.fields(model)}
    return CostTable(
        layer_names=shapes.names,
        bits=tuple(bits),
        latency=costs.latency,
        energy=costs.energy,
        size=size_bits(shapes, w_bits, a_bits),
        bops=bops(shapes, w_bits, a_bits),
        preset=hardware.preset,
        memory_bound_table=costs.memory_bound,
        batch_size=model.batch_size if "batch_size" in fields else 1,
        reference_bits=reference_bits,
        table_units=costs.table_units,
    )
