"""Hardware cost models: compile a model's layer table into ``[layer, w_bits, a_bits]`` cost tables.

``build_cost_table(layers, hardware)`` picks a preset from :data:`PRESETS` by ``hardware.preset``, applies
``hardware.overrides``, and returns a :class:`CostTable` of latency, energy, size and BOPs. See docs/hardware.md
for every preset's formula, parameters and sources.
"""

from mpq_rl.hardware.base import CostModel
from mpq_rl.hardware.cost_table import CostTable
from mpq_rl.hardware.presets import PRESETS, Preset, build_cost_table, resolve_model
from mpq_rl.hardware.report import cost_report, render_cost_report
from mpq_rl.hardware.shapes import BITS, LayerShapes

__all__ = [
    "BITS",
    "PRESETS",
    "CostModel",
    "CostTable",
    "LayerShapes",
    "Preset",
    "build_cost_table",
    "cost_report",
    "render_cost_report",
    "resolve_model",
]
