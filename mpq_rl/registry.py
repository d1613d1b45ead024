"""Registries: the built-in models, datasets, searchers and hardware presets, found by the name a config gives.

Every registry works the same way. An entry is either the object itself or ``"pkg.module:attr"``, imported on
first use (so listing the searchers never imports stable-baselines3, nor the models transformers). Wherever a config
names an entry, ``"pkg.module:attr"`` names user code instead: a model or data factory, a reward function, a
searcher class, or a hardware cost model.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Generic, TypeVar

from mpq_rl.errors import UserError
from mpq_rl.imports import import_object

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """Named entries of one kind; ``key`` is the config key that names them (e.g. ``model.name``)."""

    def __init__(self, key: str, entries: Mapping[str, T | str], alternatives: str = "") -> None:
        self.key = key
        self._entries = dict(entries)
        self._loaded: dict[str, T] = {}
        self.alternatives = alternatives
        """What else the key accepts, for the error message (e.g. ``"'none'"``)."""

    def __getitem__(self, name: str) -> T:
        if name not in self._loaded:
            entry = self._entries[name]
            self._loaded[name] = import_object(entry, self.key) if isinstance(entry, str) else entry
        return self._loaded[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def source(self, name: str) -> str:
        """Where a lazy entry lives (``"pkg.module:attr"``), or the entry's repr."""
        entry = self._entries[name]
        return entry if isinstance(entry, str) else repr(entry)

    def resolve(self, name: str) -> T | Any:
        """The entry ``name``, or the user object ``name`` names as ``"pkg.module:attr"``; anything else is a
        :class:`UserError` listing the built-in names."""
        if isinstance(name, str) and ":" in name:
            return import_object(name, self.key)
        if name in self._entries:
            return self[name]
        others = ", ".join(filter(None, [self.alternatives, "or 'pkg.module:attr'"]))
        raise UserError(f"unknown {self.key} {name!r}: use one of {list(self._entries)}, {others}")
