"""The labelled train split as a shuffled loader, checked before training: what LSQ finetuning and
adaptive-precision training learn from (a search never sees it)."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, default_collate

from mpq_rl.errors import UserError
from mpq_rl.workloads.data import split_item
from mpq_rl.workloads.model_io import call_model, output_tensor
from mpq_rl.workloads.workload import Workload, check_labels, finite


def _collate(items: list[Any]) -> tuple[Any, torch.Tensor]:
    pairs = [split_item(item) for item in items]
    return default_collate([x for x, _ in pairs]), default_collate([t for _, t in pairs])


def train_loader(workload: Workload, batch_size: int, seed: int) -> DataLoader:
    """The labelled train split, shuffled by ``seed``: what finetuning and adaptive-precision training learn from."""
    train = workload.train
    if train is None or len(train) == 0:
        raise UserError("training needs a train split: use a dataset (or data.factory) that returns 'train'")
    if split_item(train[0])[1] is None:
        raise UserError("training uses labels, but the train split has no targets: give (input, target) items")
    if batch_size < 1:
        raise UserError(f"training batch size must be at least 1, got {batch_size}")
    _check_train(train, workload, batch_size)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(train, batch_size=batch_size, shuffle=True, generator=generator, collate_fn=_collate)


def _check_train(train: Any, workload: Workload, batch_size: int) -> None:
    """Refuse, before training, a train split whose inputs are not finite or whose labels are not class ids of
    the model's output (one pass, in order); a NaN in training data would otherwise surface as a diverged loss."""
    with torch.no_grad():
        classes = output_tensor(call_model(workload.model, workload.calibration.example())).shape[-1]
    labels = []
    for number, (inputs, targets) in enumerate(DataLoader(train, batch_size=batch_size, collate_fn=_collate), 1):
        if not finite(inputs):
            raise UserError(f"the train split has NaN or infinite inputs (batch {number}): clean or drop those samples")
        labels.append(targets)
    check_labels(labels, "train", classes)
