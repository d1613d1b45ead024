"""The cost-model protocol and the one way a preset's parameters are overridden from the config.

A cost model is a frozen dataclass of documented parameters (units in the names) with one method, ``cost``, that
turns a table of layer shapes and arrays of bits into ``[layer, w_bits, a_bits]`` latency, energy and
memory-boundness. A preset is such a dataclass with its default values; ``hardware.overrides`` replaces fields.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from mpq_rl.errors import UserError
from mpq_rl.hardware.roofline import LayerCosts
from mpq_rl.hardware.shapes import LayerShapes


class CostModel(Protocol):
    """Anything that prices layers: ``cost`` broadcasts ``[L,1,1]`` shapes with ``[1,B,1]`` / ``[1,1,B]`` bits."""

    batch_size: int

    def cost(self, shapes: LayerShapes, w_bits: np.ndarray, a_bits: np.ndarray) -> LayerCosts: ...


_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
    "str": (str,),
    "bool": (bool,),
    "None": (type(None),),
    "Path": (str, Path),
}


def _accepts(annotation: str, value: Any) -> bool:
    for name in annotation.replace(" ", "").split("|"):
        allowed = _TYPES.get(name, (object,))
        if isinstance(value, bool) and bool not in allowed:
            continue
        if isinstance(value, allowed):
            return True
    return False


def parameter_names(model: Any) -> list[str]:
    """The parameters of a preset that ``hardware.overrides`` may set."""
    return [f.name for f in dataclasses.fields(model) if f.init]


def apply_overrides(model: Any, overrides: dict[str, Any], preset: str) -> Any:
    """``model`` with ``overrides`` applied; unknown keys and wrongly typed values are a :class:`UserError`."""
    allowed = parameter_names(model)
    fields = {f.name: f for f in dataclasses.fields(model)}
    changes: dict[str, Any] = {}
    for key, value in overrides.items():
        if key not in allowed:
            raise UserError(
                f"hardware.overrides.{key} is not a parameter of preset {preset!r}; allowed keys: {', '.join(allowed)}"
            )
        annotation = str(fields[key].type)
        if not _accepts(annotation, value):
            raise UserError(
                f"hardware.overrides.{key} must be of type {annotation} for preset {preset!r}, got {value!r}"
            )
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise UserError(f"hardware.overrides.{key} must be a finite number, got {value!r}")
            if value < 0:
                raise UserError(f"hardware.overrides.{key} must not be negative, got {value!r}")
        if "Path" in annotation and isinstance(value, str):
            value = Path(value)
        elif annotation == "float":
            value = float(value)
        changes[key] = value
    if changes.get("batch_size", 1) < 1:
        raise UserError(f"hardware.overrides.batch_size must be at least 1, got {changes['batch_size']}")
    result = dataclasses.replace(model, **changes)
    check = getattr(result, "validate", None)
    if check is not None:
        check()
    return result
