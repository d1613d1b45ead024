"""The ``hardware`` section of a run configuration."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from mpq_rl.settings import FilePath, Section


class HardwareConfig(Section):
    """The hardware cost model: a preset, the metric the budget constrains, and parameter overrides."""

    preset: str = "bitfusion"
    metric: Literal["latency", "energy", "size", "bops"] = "latency"
    overrides: dict[str, Any] = Field(default_factory=dict)
    table: FilePath | None = None

    @field_validator("table")
    @classmethod
    def _table_exists(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_file():
            raise ValueError(f"hardware.table file {str(v)!r} does not exist")
        return v
