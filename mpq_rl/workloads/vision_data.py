"""ImageNet and CIFAR-10 from folders the user supplies (nothing is downloaded), for the reproduction configs.

Both need torchvision (the ``vision`` extra). The calibration split is a fixed, seeded subset of the training
images and the test split is the official validation/test set, so the search never sees a test image.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Subset

from mpq_rl.errors import UserError
from mpq_rl.workloads.data import Splits

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CALIBRATION_SEED = 0
"""Seeds the choice of calibration images among the training images; fixed so every run uses the same ones."""


def _torchvision():
    try:
        import torchvision
    except ImportError:
        raise UserError(
            "ImageNet and CIFAR-10 data need torchvision: pip install 'mpq_rl[vision]' "
            "(see the README for the torch/torchvision pair to install)"
        ) from None
    return torchvision


def _folder(root: str | Path, *parts: str) -> Path:
    path = Path(root, *parts)
    if not path.is_dir():
        raise UserError(f"data folder {str(path)!r} does not exist: set data.kwargs.root to your copy of the data set")
    return path


def _calibration_subset(train, size: int) -> Subset:
    if size > len(train):
        raise UserError(f"calibration_size {size} is larger than the {len(train)} training images")
    indices = torch.randperm(len(train), generator=torch.Generator().manual_seed(CALIBRATION_SEED))[:size]
    return Subset(train, sorted(indices.tolist()))


def load_imagenet(root: str, calibration_size: int = 2048, image_size: int = 224) -> Splits:
    """ImageNet in ``root/train`` and ``root/val`` (class folders): calibration from train, test = val."""
    tv = _torchvision()
    transforms = tv.transforms
    normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    evaluation = transforms.Compose(
        [
            transforms.Resize(int(image_size * 256 / 224)),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            normalize,
        ]
    )
    augment = transforms.Compose(
        [transforms.RandomResizedCrop(image_size), transforms.RandomHorizontalFlip(), transforms.ToTensor(), normalize]
    )
    train_dir, val_dir = _folder(root, "train"), _folder(root, "val")
    return {
        "calibration": _calibration_subset(tv.datasets.ImageFolder(train_dir, evaluation), calibration_size),
        "test": tv.datasets.ImageFolder(val_dir, evaluation),
        "train": tv.datasets.ImageFolder(train_dir, augment),
    }


def load_cifar10(root: str, calibration_size: int = 2048) -> Splits:
    """CIFAR-10 already extracted in ``root`` (``cifar-10-batches-py``): calibration from train, test = test."""
    tv = _torchvision()
    transforms = tv.transforms
    normalize = transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD)
    evaluation = transforms.Compose([transforms.ToTensor(), normalize])
    augment = transforms.Compose(
        [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), transforms.ToTensor(), normalize]
    )
    folder = _folder(root)
    if not (folder / "cifar-10-batches-py").is_dir():
        raise UserError(f"{folder} has no cifar-10-batches-py folder: extract the CIFAR-10 python archive there")
    return {
        "calibration": _calibration_subset(
            tv.datasets.CIFAR10(folder, train=True, transform=evaluation), calibration_size
        ),
        "test": tv.datasets.CIFAR10(folder, train=False, transform=evaluation),
        "train": tv.datasets.CIFAR10(folder, train=True, transform=augment),
    }
