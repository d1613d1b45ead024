"""The registry of hardware presets and :func:`build_cost_table`, which compiles a layer table into costs."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mpq_rl.errors import UserError
from mpq_rl.hardware.base import CostModel, apply_overrides, parameter_names
from mpq_rl.hardware.bitfusion import BitFusion
from mpq_rl.hardware.bitserial import BISMO_PYNQ, BISMO_ULTRA96, LOOM, STRIPES
from mpq_rl.hardware.cost_table import CostTable
from mpq_rl.hardware.counts import BopsCount, SizeCount, bops, size_bits
from mpq_rl.hardware.flexible import FormatFlexible
from mpq_rl.hardware.gpu import A100, T4
from mpq_rl.hardware.lut import LookupTable
from mpq_rl.hardware.settings import HardwareConfig
from mpq_rl.hardware.shapes import BITS, LayerShapes, bit_grid
from mpq_rl.quantization.bits import REFERENCE_BITS
from mpq_rl.quantization.formats import bits_of, candidate_codes
from mpq_rl.registry import Registry
from mpq_rl.workloads.layers import LayerTable


@dataclass(frozen=True)
class Preset:
    """A named cost model with its default parameters and a one-line description."""

    name: str
    model: Any
    summary: str

    @property
    def parameters(self) -> dict[str, Any]:
        return {key: getattr(self.model, key) for key in parameter_names(self.model)}


_BUILT_IN = (
    Preset("bitfusion", BitFusion(), "Bit Fusion (ISCA 2018), 16x32 fusion units at 500 MHz, batch 16"),
    Preset("bismo_pynq", BISMO_PYNQ, "BISMO bit-serial on PYNQ-Z1, 8x256x8 at 200 MHz, batch 1 (edge)"),
    Preset("bismo_ultra96", BISMO_ULTRA96, "BISMO bit-serial on Ultra96, 10x256x10 at 300 MHz, batch 16"),
    Preset("stripes", STRIPES, "Stripes (MICRO 2016): bit-serial activations, time ~ a_bits / 16"),
    Preset("loom", LOOM, "Loom (DAC 2018): convs ~ w_bits * a_bits / 256, fully connected ~ w_bits / 16"),
    Preset("t4", T4, "NVIDIA T4 tensor cores: INT4 / INT8 / FP16 modes with a 320 GB/s roofline, batch 16"),
    Preset("a100", A100, "NVIDIA A100 tensor cores: INT4 / INT8 / FP16 modes with a 1555 GB/s roofline, batch 16"),
    Preset(
        "flexible",
        FormatFlexible(),
        "Bit Fusion 16x32 with fp and flint operand decoders (ANT-style), prices int, fp and flint",
    ),
    Preset("bops", BopsCount(), "bit operations, MACs * w_bits * a_bits (HAWQ-V3)"),
    Preset("size", SizeCount(), "model size, parameters * w_bits"),
    Preset("lut", LookupTable(), "a measured table from hardware.table (HAQ .npy, or .csv / .json rows)"),
)
PRESETS: Registry[Preset] = Registry("hardware.preset", {p.name: p for p in _BUILT_IN})


def resolve_model(hardware: HardwareConfig) -> CostModel:
    """The preset's cost model with ``hardware.overrides`` (and ``hardware.table``) applied."""
    preset = PRESETS.resolve(hardware.preset)
    if not isinstance(preset, Preset):  # "pkg.module:attr": a cost model of the user's
        if not dataclasses.is_dataclass(preset) or isinstance(preset, type) or not hasattr(type(preset), "cost"):
            raise UserError(
                f"hardware.preset {hardware.preset!r} is not a cost model: give a dataclass instance with a "
                "cost(shapes, w_bits, a_bits) method (see mpq_rl.hardware.base.CostModel) or a Preset"
            )
        preset = Preset(hardware.preset, preset, "user cost model")
    overrides = dict(hardware.overrides)
    if hardware.table is not None:
        if "table" not in parameter_names(preset.model):
            raise UserError(
                f"hardware.table is only read by the 'lut' preset, not {hardware.preset!r}: "
                "remove it or set hardware.preset: lut"
            )
        overrides["table"] = hardware.table
    return apply_overrides(preset.model, overrides, hardware.preset)


FORMAT_BLIND_PRESETS = ("bops", "size")
"""Presets that count bits whatever their format, so they price fp and flint codes at their bit-width."""


def build_cost_table(
    layers: LayerTable,
    hardware: HardwareConfig,
    bits: tuple[int, ...] = BITS,
    formats: Sequence[str] = ("int",),
    reference_bits: tuple[int, int] = REFERENCE_BITS,
) -> CostTable:
    """Compile ``layers`` on the hardware of ``hardware`` into a :class:`CostTable` over ``bits`` x ``bits``,
    extended by the precision codes of ``formats`` (:mod:`mpq_rl.quantization.formats`) beyond integers, with budgets
    relative
    to ``reference_bits`` (``QuantizationConfig.reference_bits``)."""
    model = resolve_model(hardware)
    shapes = LayerShapes.from_table(layers)
    bits = (*bits, *(c for c in candidate_codes(list(formats), [b for b in bits if b <= 8]) if c not in bits))
    widths = tuple(bits_of(b) for b in bits)
    reads_formats = getattr(model, "reads_formats", False)
    if widths != bits and not reads_formats and hardware.preset not in FORMAT_BLIND_PRESETS:
        raise UserError(
            f"hardware preset {hardware.preset!r} runs integers only, so it cannot price quantization.formats "
            f"{list(formats)}: choose hardware.preset: flexible (or bops / size), or formats: [int]"
        )
    w_bits, a_bits = bit_grid(widths)
    with np.errstate(divide="ignore", invalid="ignore"):
        costs = model.cost(shapes, *bit_grid(bits if reads_formats else widths))
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
