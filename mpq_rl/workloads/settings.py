"""The ``model`` and ``data`` sections of a run configuration."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from mpq_rl.settings import FilePath, Section


class ModelConfig(Section):
    """Which network to quantize: a built-in ``name`` or a ``factory`` ("pkg.module:callable")."""

    name: str | None = "digits_cnn"
    factory: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    weights: FilePath | None = None
    input_shape: list[int] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        if self.factory is not None and self.name not in (None, "digits_cnn"):
            raise ValueError("give either model.name or model.factory, not both")
        if self.weights is not None and not self.weights.is_file():
            raise ValueError(f"model.weights file {str(self.weights)!r} does not exist")
        if self.input_shape is not None and (not self.input_shape or min(self.input_shape) < 1):
            raise ValueError(f"model.input_shape must be positive sizes like [1, 3, 32, 32], got {self.input_shape}")
        return self

    @property
    def source(self) -> str:
        """The factory path if one is given, else the built-in name."""
        return self.factory or self.name or ""


class DataConfig(Section):
    """Where calibration and test data come from: a built-in ``name`` or a ``factory``; ``none`` for no data."""

    name: str | None = "digits"
    factory: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    calibration_samples: int = Field(512, gt=0)
    batch_size: int = Field(256, gt=0)
