"""The ``quantization`` section of a run configuration: bit-width candidates, searched layers, ranges, formats."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from mpq_rl.quantization.bits import ALLOWED_BITS, FLOAT_BITS, INTEGER_BITS, REFERENCE_BITS
from mpq_rl.settings import Section


def _check_allowed(values: list[int], key: str) -> None:
    bad = [b for b in values if b not in ALLOWED_BITS]
    if bad:
        raise ValueError(f"{key} must be among {list(ALLOWED_BITS)} (16/32 = floating point), got {bad}")


def _check_bits(values: list[int], key: str) -> list[int]:
    _check_allowed(values, key)
    if len(set(values)) != len(values):
        raise ValueError(f"{key} lists a bit-width twice: {values}")
    return sorted(values)


class QuantizationConfig(Section):
    """The bit-width candidates, which layers are searched, and how ranges are chosen."""

    weight_bits: list[int] = Field(default_factory=lambda: list(INTEGER_BITS))
    activation_bits: list[int] = Field(default_factory=lambda: list(INTEGER_BITS))
    include: str | None = None
    exclude: str | None = None
    pin: dict[str, list[int]] = Field(default_factory=dict)
    weight_only_activation_bits: int = FLOAT_BITS[-1]
    """The precision activations run at in a weight-only search (``activation_bits: []``): 32 or 16 (floating
    point) or an integer bit-width; every layer's input is simulated and costed at it, and the budget's reference
    is W8 with activations at it, so weight bits alone reach any budget down to the lowest weight bits."""
    weight_range: Literal["mse", "minmax", "percentile"] = "mse"
    activation_range: Literal["mse", "minmax", "percentile"] = "mse"
    percentile: float = Field(99.99, gt=50.0, le=100.0, allow_inf_nan=False)
    formats: list[Literal["int", "fp", "flint"]] = Field(default_factory=lambda: ["int"])
    """Number formats each layer's weights and activations choose from (see :mod:`mpq_rl.quantization.formats`)."""

    @field_validator("formats")
    @classmethod
    def _formats(cls, v: list[str]) -> list[str]:
        if not v or len(set(v)) != len(v):
            raise ValueError(f"quantization.formats must list each format once, e.g. [int, fp, flint], got {v}")
        return v

    @field_validator("weight_bits")
    @classmethod
    def _weight_bits(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("quantization.weight_bits needs at least one bit-width, e.g. [2, 4, 8]")
        return _check_bits(v, "quantization.weight_bits")

    @field_validator("activation_bits")
    @classmethod
    def _activation_bits(cls, v: list[int]) -> list[int]:
        return _check_bits(v, "quantization.activation_bits")

    @field_validator("weight_only_activation_bits")
    @classmethod
    def _weight_only_activation_bits(cls, v: int) -> int:
        _check_allowed([v], "quantization.weight_only_activation_bits")
        return v

    @field_validator("include", "exclude")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression ({exc})") from None
        return v

    @field_validator("pin")
    @classmethod
    def _pin(cls, v: dict[str, list[int]]) -> dict[str, list[int]]:
        for name, bits in v.items():
            if len(bits) != 2:
                raise ValueError(f"quantization.pin.{name} must be [w_bits, a_bits], got {bits}")
            _check_allowed(bits, f"quantization.pin.{name}")
        return v

    @property
    def weight_only(self) -> bool:
        return not self.activation_bits

    @property
    def activation_candidates(self) -> list[int]:
        """The activation bits to choose from: ``[weight_only_activation_bits]`` for a weight-only search."""
        return self.activation_bits or [self.weight_only_activation_bits]

    @property
    def reference_bits(self) -> tuple[int, int]:
        """The bits budgets are fractions of: W8A8, or W8 at the deployed activation precision when weight-only."""
        return (REFERENCE_BITS[0], self.weight_only_activation_bits) if self.weight_only else REFERENCE_BITS
