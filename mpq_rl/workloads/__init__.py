"""Built-in models and datasets, found by the name a run config gives (``model.name``, ``data.name``).

Each entry imports its module on first use (:class:`~mpq_rl.registry.Registry`), so listing the registries stays
cheap: transformers and scikit-learn load only when a workload that needs them is built.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from mpq_rl.registry import Registry

if TYPE_CHECKING:
    from torch import nn

    from mpq_rl.workloads.data import Splits

MODELS: Registry[Callable[..., nn.Module]] = Registry(
    "model.name",
    {
        "causal_lm": "mpq_rl.workloads.causal_lm:build_causal_lm",
        "digits_cnn": "mpq_rl.workloads.digits:build_digits_cnn",
        "resnet20_digits": "mpq_rl.workloads.resnet20:build_resnet20_digits",
        "minilm": "mpq_rl.workloads.minilm:build_minilm",
        "mobilenet_v2": "mpq_rl.workloads.imagenet_models:mobilenet_v2",
        "resnet18": "mpq_rl.workloads.imagenet_models:resnet18",
        "resnet50": "mpq_rl.workloads.imagenet_models:resnet50",
        "tinylm": "mpq_rl.workloads.tinylm:build_tinylm",
    },
    alternatives="model.factory",
)
DATASETS: Registry[Callable[..., Splits]] = Registry(
    "data.name",
    {
        "cifar10": "mpq_rl.workloads.vision_data:load_cifar10",
        "digits": "mpq_rl.workloads.digits:load_digits",
        "imagenet": "mpq_rl.workloads.vision_data:load_imagenet",
        "minilm_sentences": "mpq_rl.workloads.minilm:load_minilm_sentences",
        "text": "mpq_rl.workloads.text:load_text",
    },
    alternatives="'none', data.factory",
)
