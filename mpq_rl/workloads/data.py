"""Calibration and test data: loading the splits a run names, and pre-collating them into batches.

A split is any map-style dataset (``len`` and indexing). Its items are one of

* ``(input, target)`` tuples (labelled data, e.g. a ``TensorDataset`` of images and class ids);
* bare inputs, a tensor or a 1-tuple (unlabelled data);
* dicts of tensors (tokenized text, passed to the model as keyword arguments); a ``"labels"`` key, if present,
  is the target and is not passed to the model.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch.utils.data import Dataset, default_collate

from mpq_rl.errors import UserError
from mpq_rl.imports import call_with_kwargs, import_callable
from mpq_rl.workloads import DATASETS
from mpq_rl.workloads.settings import DataConfig

Splits = dict[str, Dataset]
"""Named datasets: ``"calibration"`` and ``"test"``, optionally ``"train"``; empty for cost-only runs."""

REQUIRED_SPLITS = ("calibration", "test")
OPTIONAL_SPLITS = ("train",)
NO_DATA = (None, "none")
LABELS_KEY = "labels"


def split_item(item: Any) -> tuple[Any, Any | None]:
    """One dataset item as ``(model inputs, target or None)``."""
    if isinstance(item, torch.Tensor):
        return item, None
    if isinstance(item, Mapping):
        inputs = {k: v for k, v in item.items() if k != LABELS_KEY}
        return inputs, item.get(LABELS_KEY)
    if isinstance(item, (tuple, list)) and len(item) in (1, 2):
        return item[0], (item[1] if len(item) == 2 else None)
    kind = f"a {len(item)}-tuple" if isinstance(item, (tuple, list)) else f"a {type(item).__name__}"
    raise UserError(
        f"dataset items must be (input, target) tuples, input tensors or dicts of tensors, got {kind}: "
        "make the data factory return datasets of one of these kinds"
    )


def has_targets(dataset: Dataset) -> bool:
    """Whether ``dataset`` is labelled (judged by its first item)."""
    return split_item(dataset[0])[1] is not None


class Batches:
    """A split collated once into a list of ``(inputs, targets or None)`` batches, cheap to iterate many times."""

    def __init__(self, batches: list[tuple[Any, torch.Tensor | None]], num_samples: int) -> None:
        if not batches:
            raise UserError("a data split has no samples: give each split at least one item")
        self.batches = batches
        self.num_samples = num_samples

    @property
    def has_targets(self) -> bool:
        return self.batches[0][1] is not None

    def __iter__(self) -> Iterator[tuple[Any, torch.Tensor | None]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)

    def example(self) -> Any:
        """The inputs of the first batch, e.g. for :func:`mpq_rl.workloads.layers.discover_layers`."""
        return self.batches[0][0]

    def targets(self) -> torch.Tensor | None:
        """All targets in batch order, concatenated, or None for unlabelled data."""
        if not self.has_targets:
            return None
        return torch.cat([t for _, t in self.batches])

    def to(self, device: torch.device | str) -> Batches:
        """A copy with every tensor moved to ``device``."""
        moved = [(to_device(x, device), to_device(t, device)) for x, t in self.batches]
        return Batches(moved, self.num_samples)


def to_device(value: Any, device: torch.device | str) -> Any:
    """``value`` (a tensor, or a dict, tuple or list of them) with every tensor moved to ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, Mapping):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(to_device(v, device) for v in value)
    return value


def make_batches(dataset: Dataset, batch_size: int, limit: int | None = None, seed: int = 0) -> Batches:
    """Collate ``dataset`` into batches of ``batch_size``.

    With ``limit``, keep only the first ``limit`` samples of a shuffle seeded by ``seed`` (the same samples for the
    same seed, in any process); without it, keep every sample in dataset order.
    """
    if batch_size < 1:
        raise UserError(f"data.batch_size must be at least 1, got {batch_size}")
    size = len(dataset)
    if limit is not None and limit < size:
        generator = torch.Generator().manual_seed(seed)
        indices = torch.randperm(size, generator=generator)[:limit].tolist()
    else:
        indices = list(range(size))
    labelled = size > 0 and has_targets(dataset)
    batches = []
    for start in range(0, len(indices), batch_size):
        items = [split_item(dataset[i]) for i in indices[start : start + batch_size]]
        if any((target is not None) != labelled for _, target in items):
            raise UserError("some dataset items have a target and some do not: label all items or none")
        inputs = default_collate([x for x, _ in items])
        targets = default_collate([t for _, t in items]) if labelled else None
        batches.append((inputs, targets))
    return Batches(batches, len(indices))


def load_data(config: DataConfig) -> Splits:
    """The splits ``config`` names: a built-in dataset, a factory's, or none (``name: none``, no factory).

    A factory is called with ``config.kwargs`` only: the run's seed is never passed to it, so the held-out test
    split is the same for every run seed and the spread over seeds is search noise, not test-set noise (a factory
    that draws its splits at random takes its own ``seed`` from ``data.kwargs``). Built-in datasets use fixed
    splits. The run seed only picks which calibration samples are kept when ``data.calibration_samples`` is
    smaller than the calibration split (see :func:`make_batches`).
    """
    if config.factory is not None:
        if config.name not in (*NO_DATA, DataConfig.model_fields["name"].default):
            raise UserError(f"give either data.name ({config.name!r}) or data.factory, not both")
        fn = import_callable(config.factory, "data.factory")
        source = f"data.factory {config.factory!r}"
    elif config.name in NO_DATA:
        return {}
    else:
        fn = DATASETS.resolve(config.name)
        source = f"dataset {config.name!r}"
    return _check_splits(call_with_kwargs(fn, dict(config.kwargs), "data"), source)


def _check_splits(splits: Any, source: str) -> Splits:
    if not isinstance(splits, Mapping):
        raise UserError(
            f"{source} must return a dict {{'calibration': Dataset, 'test': Dataset}} (optionally 'train'), "
            f"got {type(splits).__name__}"
        )
    allowed = REQUIRED_SPLITS + OPTIONAL_SPLITS
    for name in splits:
        if name not in allowed:
            raise UserError(f"{source} returned an unknown split {name!r}: the splits are {list(allowed)}")
    for name in REQUIRED_SPLITS:
        if name not in splits:
            raise UserError(f"{source} returned no {name!r} split: return a dict with keys {list(REQUIRED_SPLITS)}")
    result: Splits = {}
    for name, dataset in splits.items():
        if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
            raise UserError(
                f"{source}: split {name!r} is not a dataset (it is a {type(dataset).__name__}): "
                "return a map-style torch Dataset (len and indexing), e.g. a TensorDataset"
            )
        if len(dataset) == 0:
            raise UserError(f"{source}: split {name!r} is empty: give it at least one sample")
        split_item(dataset[0])
        result[name] = dataset
    return result


def check_proxy_data(splits: Splits, proxy_metric: str) -> None:
    """Check that the data can score ``proxy_metric``: ``top1`` needs labelled calibration and test splits."""
    if "calibration" not in splits:
        raise UserError(
            f"proxy.metric {proxy_metric!r} needs calibration data, but data.name is 'none': "
            "set data.name or data.factory"
        )
    if proxy_metric != "top1":
        return
    for name in REQUIRED_SPLITS:
        if not has_targets(splits[name]):
            raise UserError(
                f"proxy.metric 'top1' needs labelled data, but the {name} split has no targets: "
                "use proxy.metric: fidelity, or give the data (input, target) items"
            )
