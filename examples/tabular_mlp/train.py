"""Train the example's model on the train split and save its state dict as ``weights.pt`` beside this file.

Run it once from this folder: ``python train.py`` (a few seconds on a CPU).
"""

from __future__ import annotations

from pathlib import Path

import torch
from tabular_data import load
from tabular_mlp import build
from torch.nn import functional as F

EPOCHS = 300
LEARNING_RATE = 3e-3


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    splits = load()
    inputs, labels = splits["train"].tensors
    model = build()
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE, weight_decay=1e-4)
    for _ in range(EPOCHS):  # full-batch training: 269 samples
        optimizer.zero_grad()
        F.cross_entropy(model(inputs), labels).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        x, y = splits["test"].tensors
        accuracy = (model(x).argmax(dim=1) == y).float().mean().item()
    path = Path(__file__).with_name("weights.pt")
    torch.save(model.state_dict(), path)
    print(f"wrote {path} (test accuracy {100 * accuracy:.2f}%)")


if __name__ == "__main__":
    main()
