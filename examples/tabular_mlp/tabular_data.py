"""The example's data: scikit-learn's breast cancer data set (569 tumours, 30 features, benign or malignant),
which ships with scikit-learn, so nothing is downloaded.

``mpq-rl`` loads it through ``data.factory: "tabular_data:load"``: a callable returning ``{"calibration": Dataset,
"test": Dataset, "train": Dataset}`` of ``(input, label)`` items; ``data.kwargs`` are its keyword arguments.
"""

from __future__ import annotations

import torch
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split
from torch.utils.data import TensorDataset

SPLIT_SEED = 0
"""The split never changes with the run's seed: every search sees the same calibration and test samples."""


def load(calibration: int = 150, test: int = 150) -> dict[str, TensorDataset]:
    """Stratified train / calibration / test splits, features standardized with the train split's statistics."""
    features, labels = load_breast_cancer(return_X_y=True)
    rest, x_test, rest_y, y_test = train_test_split(
        features, labels, test_size=test, stratify=labels, random_state=SPLIT_SEED
    )
    x_train, x_cal, y_train, y_cal = train_test_split(
        rest, rest_y, test_size=calibration, stratify=rest_y, random_state=SPLIT_SEED
    )
    mean, std = x_train.mean(axis=0), x_train.std(axis=0) + 1e-8

    def dataset(x, y) -> TensorDataset:
        return TensorDataset(torch.tensor((x - mean) / std, dtype=torch.float32), torch.tensor(y, dtype=torch.int64))

    return {"train": dataset(x_train, y_train), "calibration": dataset(x_cal, y_cal), "test": dataset(x_test, y_test)}
