"""The ``resnet20_digits`` model: a CIFAR-style ResNet-20 (He et al., CVPR 2016, section 4.2) for the digits data.

22 quantizable layers: the 3x3 stem, nine basic blocks of two 3x3 convolutions in three stages of 16, 32 and 64
channels (8x8, 4x4 and 2x2 feature maps on the 8x8 digits), the two 1x1 projection shortcuts where a stage
halves the resolution (the paper's option B), and the classifier. A workload deep enough that the per-layer
choices interact and a 20-layer search space (~10^25 policies at 4 weight x 4 activation candidates) cannot be
enumerated. Trained on the digits train split on first use and cached like the digits CNN
(:func:`mpq_rl.workloads.digits.trained_model`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from mpq_rl.workloads.digits import NUM_CLASSES, CachedModel, train_classifier, trained_model

WIDTHS = (16, 32, 64)
BLOCKS_PER_STAGE = 3
TRAIN_RECIPE = {
    "seed": 0,
    "epochs": 30,
    "batch_size": 50,
    "optimizer": "adamw",
    "lr": 3e-3,
    "weight_decay": 1e-4,
    "schedule": "cosine",
    "threads": 1,
}


class Block(nn.Module):
    """ResNet's basic block; a 1x1 convolution (with batch norm) projects the shortcut when the shape changes."""

    def __init__(self, inputs: int, outputs: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs)
        self.shortcut = nn.Sequential()
        if stride != 1 or inputs != outputs:
            self.shortcut = nn.Sequential(
                nn.Conv2d(inputs, outputs, 1, stride=stride, bias=False), nn.BatchNorm2d(outputs)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet20(nn.Module):
    """ResNet-20 for one-channel 8x8 images: ``stem``, ``stage{1,2,3}.{0,1,2}.conv{1,2}``, the projection
    shortcuts ``stage{2,3}.0.shortcut.0`` and ``classifier``."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, WIDTHS[0], 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(WIDTHS[0])
        stages = []
        inputs = WIDTHS[0]
        for i, width in enumerate(WIDTHS):
            blocks = [Block(inputs if b == 0 else width, width, 2 if i > 0 and b == 0 else 1) for b in range(3)]
            stages.append(nn.Sequential(*blocks))
            inputs = width
        self.stage1, self.stage2, self.stage3 = stages
        self.classifier = nn.Linear(WIDTHS[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem_bn(self.stem(x)))
        x = self.stage3(self.stage2(self.stage1(x)))
        return self.classifier(x.mean(dim=(2, 3)))


RESNET20 = CachedModel(
    stem="resnet20_digits", cache_format="mpq_rl.resnet20_digits/1", build=lambda: ResNet20(), recipe=TRAIN_RECIPE
)


def train_resnet20(train: TensorDataset) -> ResNet20:
    """Train a fresh :class:`ResNet20` with :data:`TRAIN_RECIPE` (seeded, repeatable)."""
    return train_classifier(RESNET20, train)


def build_resnet20_digits(cache_dir: str | Path | None = None) -> nn.Module:
    """The ``resnet20_digits`` built-in: the trained :class:`ResNet20`, loaded from the model cache or trained
    there on first use (about a minute on one core)."""
    return trained_model(RESNET20, Path(cache_dir) if cache_dir is not None else None, train_resnet20)
