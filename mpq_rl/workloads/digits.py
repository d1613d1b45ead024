"""The ``digits`` dataset and the ``digits_cnn`` model: a small, real workload that trains in seconds on a CPU.

Data: scikit-learn's handwritten digits (1797 grey 8x8 images, 10 classes, bundled with scikit-learn, so nothing
is downloaded), pixels scaled from 0..16 to [0, 1] floats of shape [1, 8, 8]. The split into train (1000),
calibration (400) and test (397) images is stratified by class and seeded by the constant :data:`SPLIT_SEED`, not
by the run's seed, so every run searches on the same calibration images and is scored on the same test images.

Model: :class:`DigitsCNN`, nine quantizable layers covering the shapes that matter to mixed precision (a
residual block, a depthwise-separable pair, strided convolutions, fully connected layers). It is trained on the
train split on first use and cached (see :func:`trained_digits_cnn`).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from mpq_rl import status
from mpq_rl.io import atomic_write_bytes, atomic_write_json
from mpq_rl.workloads.data import Splits

log = logging.getLogger(__name__)

SPLIT_SEED = 20240607
"""Seeds the fixed train / calibration / test split; independent of the run's seed on purpose."""
SPLIT_SIZES = {"train": 1000, "calibration": 400, "test": 397}
NUM_CLASSES = 10
WIDTH = 12
"""Channels of the first stage; later stages have 2x and 4x."""

CACHE_ENV = "MPQ_RL_CACHE"
CACHE_FORMAT = "mpq_rl.digits_cnn/1"

TRAIN_RECIPE = {
    "seed": 0,
    "epochs": 40,
    "batch_size": 50,
    "optimizer": "adamw",
    "lr": 3e-3,
    "weight_decay": 1e-4,
    "schedule": "cosine",
    "threads": 2,
}
"""How :func:`trained_digits_cnn` trains; changing it (or the architecture) invalidates cached weights."""


def split_indices() -> dict[str, np.ndarray]:
    """Indices into ``sklearn.datasets.load_digits()`` of each split, sorted; the same on every call."""
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    labels = sk_load_digits().target
    everything = np.arange(len(labels))
    rest, test = train_test_split(everything, test_size=SPLIT_SIZES["test"], stratify=labels, random_state=SPLIT_SEED)
    train, calibration = train_test_split(
        rest, test_size=SPLIT_SIZES["calibration"], stratify=labels[rest], random_state=SPLIT_SEED
    )
    return {"train": np.sort(train), "calibration": np.sort(calibration), "test": np.sort(test)}


def load_digits() -> Splits:
    """The train / calibration / test splits as ``TensorDataset``s of (image [1, 8, 8] float, label int64)."""
    from sklearn.datasets import load_digits as sk_load_digits

    digits = sk_load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    return {
        name: TensorDataset(images[torch.from_numpy(idx)], labels[torch.from_numpy(idx)])
        for name, idx in split_indices().items()
    }


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and an identity shortcut (ResNet's basic block)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + x)


class DigitsCNN(nn.Module):
    """A CNN for 8x8 digits with nine quantizable layers, named by role.

    With ``width`` w: ``stem`` 1->w 3x3, ``block.conv1``/``block.conv2`` residual w->w, ``down`` w->2w stride 2,
    ``dw`` depthwise 3x3 and ``pw`` pointwise 2w->4w, ``down2`` 4w->4w stride 2, global average pool, ``fc``
    4w->4w, ``classifier`` 4w->10. Each convolution is followed by batch norm and ReLU. The default width (12) is
    as small as keeps FP32 test accuracy near 99% while 2-bit quantization visibly hurts.
    """

    def __init__(self, num_classes: int = NUM_CLASSES, width: int = WIDTH) -> None:
        super().__init__()
        c1, c2, c4 = width, 2 * width, 4 * width
        self.stem = nn.Conv2d(1, c1, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(c1)
        self.block = BasicBlock(c1)
        self.down = nn.Conv2d(c1, c2, 3, stride=2, padding=1, bias=False)
        self.down_bn = nn.BatchNorm2d(c2)
        self.dw = nn.Conv2d(c2, c2, 3, padding=1, groups=c2, bias=False)
        self.dw_bn = nn.BatchNorm2d(c2)
        self.pw = nn.Conv2d(c2, c4, 1, bias=False)
        self.pw_bn = nn.BatchNorm2d(c4)
        self.down2 = nn.Conv2d(c4, c4, 3, stride=2, padding=1, bias=False)
        self.down2_bn = nn.BatchNorm2d(c4)
        self.fc = nn.Linear(c4, c4)
        self.classifier = nn.Linear(c4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem_bn(self.stem(x)))
        x = self.block(x)
        x = F.relu(self.down_bn(self.down(x)))
        x = F.relu(self.dw_bn(self.dw(x)))
        x = F.relu(self.pw_bn(self.pw(x)))
        x = F.relu(self.down2_bn(self.down2(x)))
        x = x.mean(dim=(2, 3))
        x = F.relu(self.fc(x))
        return self.classifier(x)


@dataclass(frozen=True)
class CachedModel:
    """A classifier trained on the digits train split and cached as ``{stem}.pt`` next to ``{stem}.json``."""

    stem: str
    cache_format: str
    build: Callable[[], nn.Module]
    """A fresh, untrained model (its ``repr`` is part of the recipe hash)."""
    recipe: dict[str, Any]
    """How it trains (as :data:`TRAIN_RECIPE`); changing it, or the architecture, invalidates cached weights."""

    @property
    def weights_file(self) -> str:
        return f"{self.stem}.pt"

    @property
    def manifest_file(self) -> str:
        return f"{self.stem}.json"

    def recipe_hash(self) -> str:
        """A hash of the architecture, the data split and the training recipe: cached weights match only this."""
        recipe = {
            "format": self.cache_format,
            "architecture": repr(self.build()),
            "split_seed": SPLIT_SEED,
            "split_sizes": SPLIT_SIZES,
            "train": self.recipe,
        }
        return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


DIGITS_CNN = CachedModel(stem="digits_cnn", cache_format=CACHE_FORMAT, build=lambda: DigitsCNN(), recipe=TRAIN_RECIPE)
WEIGHTS_FILE = DIGITS_CNN.weights_file
MANIFEST_FILE = DIGITS_CNN.manifest_file


def recipe_hash() -> str:
    """The digits CNN's :meth:`CachedModel.recipe_hash`."""
    return DIGITS_CNN.recipe_hash()


def accuracy(model: nn.Module, dataset: TensorDataset) -> float:
    """Top-1 accuracy of ``model`` on a ``TensorDataset`` of (image, label), in [0, 1]."""
    images, labels = dataset.tensors
    model.eval()
    with torch.no_grad():
        return (model(images).argmax(dim=1) == labels).float().mean().item()


def train_classifier(spec: CachedModel, train: TensorDataset) -> nn.Module:
    """Train a fresh ``spec.build()`` on ``train`` with ``spec.recipe`` (AdamW, cosine schedule; seeded, with a
    fixed thread count: repeatable)."""
    recipe = spec.recipe
    generator = torch.Generator().manual_seed(recipe["seed"])
    with torch.random.fork_rng(devices=[]):  # seeds the initial weights without moving the caller's global RNG
        torch.manual_seed(recipe["seed"])
        model = spec.build()
    images, labels = train.tensors
    batch, epochs = recipe["batch_size"], recipe["epochs"]
    steps_per_epoch = -(-len(labels) // batch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe["lr"], weight_decay=recipe["weight_decay"])
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    model.train()
    # The thread count changes how convolutions split their sums, hence the trained weights: it is part of the
    # recipe, so every machine trains the same model whatever torch.get_num_threads() the caller has.
    threads = torch.get_num_threads()
    torch.set_num_threads(recipe["threads"])
    try:
        for _ in range(epochs):
            order = torch.randperm(len(labels), generator=generator)
            for start in range(0, len(order), batch):
                idx = order[start : start + batch]
                loss = F.cross_entropy(model(images[idx]), labels[idx])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def train_digits_cnn(train: TensorDataset) -> DigitsCNN:
    """Train a fresh :class:`DigitsCNN` with :data:`TRAIN_RECIPE` (seeded, with a fixed thread count: repeatable)."""
    return train_classifier(DIGITS_CNN, train)


def default_cache_dir() -> Path:
    """``$MPQ_RL_CACHE`` if set, else ``~/.cache/mpq_rl``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "mpq_rl")


def trained_model(spec: CachedModel, cache_dir: Path | None, train: Callable[[TensorDataset], nn.Module]) -> nn.Module:
    """The trained model of ``spec`` in eval mode: loaded from ``cache_dir`` (default :func:`default_cache_dir`), or
    trained with ``train`` on the digits train split and cached there.

    The cache is ``{stem}.pt`` (a state dict) next to ``{stem}.json`` (format, recipe hash, the weights' sha256,
    FP32 test accuracy). A cache that is unreadable, corrupted or from another recipe is rebuilt.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    model = _load_cached(spec, cache_dir)
    if model is not None:
        status.say(f"using the trained digits CNN cached in {cache_dir}")
        return model
    status.say(
        f"training the built-in digits CNN once (15-70 s on a CPU, one thread); it is cached in {cache_dir} "
        f"(${CACHE_ENV} to move it)"
    )
    splits = load_digits()
    started = time.perf_counter()
    model = train(splits["train"])
    seconds = time.perf_counter() - started
    test_accuracy = accuracy(model, splits["test"])
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    weights = buffer.getvalue()
    # Weights first, manifest last: an interrupted write leaves a manifest that does not match, never the reverse.
    atomic_write_bytes(cache_dir / spec.weights_file, weights)
    atomic_write_json(
        cache_dir / spec.manifest_file,
        {
            "format": spec.cache_format,
            "recipe_sha256": spec.recipe_hash(),
            "weights_sha256": hashlib.sha256(weights).hexdigest(),
            "fp32_test_accuracy": test_accuracy,
            "train_seconds": round(seconds, 2),
            "torch_version": torch.__version__,
        },
    )
    log.info(
        "trained %s in %.1f s (test accuracy %.2f%%), cached in %s", spec.stem, seconds, 100 * test_accuracy, cache_dir
    )
    return model


def trained_digits_cnn(cache_dir: Path | None = None) -> DigitsCNN:
    """The trained :class:`DigitsCNN` in eval mode: loaded from ``cache_dir``, or trained (~15 s) and cached there
    (see :func:`trained_model`)."""
    return trained_model(DIGITS_CNN, cache_dir, lambda train: train_digits_cnn(train))


def _load_cached(spec: CachedModel, cache_dir: Path) -> nn.Module | None:
    manifest_path, weights_path = cache_dir / spec.manifest_file, cache_dir / spec.weights_file
    if not manifest_path.exists():
        return None
    problem = None
    try:
        manifest = json.loads(manifest_path.read_text())
        weights = weights_path.read_bytes()
    except (OSError, ValueError) as exc:
        problem = f"unreadable ({type(exc).__name__})"
    else:
        if not isinstance(manifest, dict) or manifest.get("format") != spec.cache_format:
            problem = "in an unknown format"
        elif manifest.get("recipe_sha256") != spec.recipe_hash():
            problem = "stale (made by another model or training recipe)"
        elif manifest.get("weights_sha256") != hashlib.sha256(weights).hexdigest():
            problem = "corrupted (weights do not match their sha256)"
    if problem is None:
        try:
            model = spec.build()
            model.load_state_dict(torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True))
            return model.eval()
        except Exception as exc:
            problem = f"unloadable ({type(exc).__name__})"
    log.warning("cached %s in %s is %s: retraining it", spec.stem, cache_dir, problem)
    return None


def build_digits_cnn(cache_dir: str | Path | None = None) -> nn.Module:
    """The ``digits_cnn`` built-in: the trained :class:`DigitsCNN` (see :func:`trained_digits_cnn`)."""
    return trained_digits_cnn(Path(cache_dir) if cache_dir is not None else None)
