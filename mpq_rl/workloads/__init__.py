"""Built-in models and datasets, found by the name a run config gives (``model.name``, ``data.name``).

Each entry imports its module on first use, so listing the registries stays cheap: transformers and
scikit-learn load only when a workload that needs them is built.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

    from mpq_rl.data import Splits


class _Lazy:
    """A registry entry: ``module:attr``, imported when called or when its signature is asked for."""

    def __init__(self, module: str, attr: str) -> None:
        self.module = module
        self.attr = attr
        self.__name__ = self.__qualname__ = attr

    def load(self) -> Callable[..., Any]:
        return getattr(importlib.import_module(self.module), self.attr)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.load()(*args, **kwargs)

    @property
    def __signature__(self) -> inspect.Signature:
        return inspect.signature(self.load())

    def __repr__(self) -> str:
        return f"{self.module}:{self.attr}"


MODELS: dict[str, Callable[..., nn.Module]] = {
    "digits_cnn": _Lazy("mpq_rl.workloads.digits", "build_digits_cnn"),
    "minilm": _Lazy("mpq_rl.workloads.minilm", "build_minilm"),
    "mobilenet_v2": _Lazy("mpq_rl.workloads.imagenet_models", "mobilenet_v2"),
    "resnet18": _Lazy("mpq_rl.workloads.imagenet_models", "resnet18"),
    "resnet50": _Lazy("mpq_rl.workloads.imagenet_models", "resnet50"),
}
DATASETS: dict[str, Callable[..., Splits]] = {
    "digits": _Lazy("mpq_rl.workloads.digits", "load_digits"),
    "minilm_sentences": _Lazy("mpq_rl.workloads.minilm", "load_minilm_sentences"),
    "imagenet": _Lazy("mpq_rl.workloads.vision_data", "load_imagenet"),
    "cifar10": _Lazy("mpq_rl.workloads.vision_data", "load_cifar10"),
}
