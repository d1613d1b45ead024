"""The example's model: a small multilayer perceptron for tabular data (four ``nn.Linear`` layers).

``mpq-rl`` builds it through ``model.factory: "tabular_mlp:build"`` in ``config.yaml``; any callable that returns an
``nn.Module`` works the same way, and ``model.kwargs`` are its keyword arguments.
"""

from __future__ import annotations

from torch import nn


class TabularMLP(nn.Module):
    """``features`` inputs -> two hidden layers of ``hidden`` units -> a bottleneck -> ``classes`` logits."""

    def __init__(self, features: int = 30, hidden: int = 64, classes: int = 2) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden // 2),
            nn.ReLU(),
        )
        self.head = nn.Linear(hidden // 2, classes)

    def forward(self, x):
        return self.head(self.body(x))


def build(hidden: int = 64) -> nn.Module:
    """The model ``mpq-rl`` quantizes (its weights come from ``model.weights``, written by ``train.py``)."""
    return TabularMLP(hidden=hidden)
