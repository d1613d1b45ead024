"""The base of every configuration section (:mod:`mpq_rl.config` composes them; each package declares its own)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

FilePath = Annotated[Path, Field(strict=False)]
"""A path given as a YAML string."""


class Section(BaseModel):
    """A section of the run configuration: unknown keys refused, values of the declared type only, frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
