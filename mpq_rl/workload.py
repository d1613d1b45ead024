"""A workload: the model, its data and its layer table, assembled from a run configuration.

This is the first stage of the data path (model -> layer table -> cost table -> environment -> agent ->
evaluator -> logger): everything downstream receives a :class:`Workload` or pieces of it, never the config.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import Dataset

from mpq_rl.config import REFERENCE_BITS, RunConfig
from mpq_rl.data import Batches, Splits, check_proxy_data, load_data, make_batches
from mpq_rl.errors import UserError
from mpq_rl.layers import LayerTable, discover_layers
from mpq_rl.models import build_model
from mpq_rl.policy import Policy


@dataclass
class Workload:
    """What a run quantizes: the model, its calibration/test batches, its layers, and which layers are searched."""

    config: RunConfig
    model: nn.Module
    layers: LayerTable
    searched: tuple[str, ...]
    fixed: Policy
    calibration: Batches | None = None
    test: Batches | None = None
    train: Dataset | None = field(default=None, repr=False)

    def full_policy(self, searched: Policy) -> Policy:
        """The bits of every layer, in execution order: the searched layers' plus the fixed ones."""
        merged = {**self.fixed, **searched}
        missing = [name for name in self.layers.names if name not in merged]
        if missing:
            raise UserError(f"policy has no bits for layer {missing[0]!r}")
        return {name: merged[name] for name in self.layers.names}

    def uniform(self, w_bits: int, a_bits: int) -> Policy:
        """Every searched layer at ``(w_bits, a_bits)``, the fixed layers as configured."""
        return self.full_policy({name: (w_bits, a_bits) for name in self.searched})


def resolve_layer_name(name: str, layers: LayerTable) -> str:
    """``first`` and ``last`` name the first and last layer to run; other names must be layers of the model."""
    if name == "first":
        return layers.names[0]
    if name == "last":
        return layers.names[-1]
    layers.index_of(name)
    return name


def example_input(config: RunConfig, calibration: Batches | None) -> object:
    """A batch for layer discovery: the first calibration batch, or zeros of ``model.input_shape``."""
    if calibration is not None:
        return calibration.example()
    if config.model.input_shape is None:
        raise UserError("with no data, give model.input_shape (e.g. [1, 3, 224, 224]) so the layers can be measured")
    return torch.zeros(config.model.input_shape)


def load_workload(config: RunConfig, with_data: bool = True) -> Workload:
    """Build the model, load the data and measure the layer table for ``config``."""
    model = build_model(config.model)
    splits = load_data(config.data) if with_data else {}
    return assemble_workload(config, model, splits)


def assemble_workload(config: RunConfig, model: nn.Module, splits: Splits) -> Workload:
    """A workload from a model and data splits already in hand (``{"calibration", "test", "train"}``).

    ``config`` still supplies the bit candidates, layer selection, batch size and seed.
    """
    model.eval()
    calibration = test = None
    if splits:
        check_proxy_data(splits, config.proxy.metric)
        calibration = make_batches(
            splits["calibration"], config.data.batch_size, limit=config.data.calibration_samples, seed=config.seed
        )
        if "test" in splits:
            test = make_batches(splits["test"], config.data.batch_size)
    layers = discover_layers(model, example_input(config, calibration), model_name=config.model.source)

    quant = config.quantization
    a_fixed = REFERENCE_BITS[1] if quant.activation_bits else quant.activation_candidates[0]
    pinned = {resolve_layer_name(name, layers): (bits[0], bits[1]) for name, bits in quant.pin.items()}
    candidates = [name for name in layers.select(quant.include, quant.exclude) if name not in pinned]
    if not candidates:
        raise UserError("every selected layer is pinned: un-pin a layer or widen quantization.include")
    fixed = {name: pinned.get(name, (REFERENCE_BITS[0], a_fixed)) for name in layers.names if name not in candidates}
    return Workload(
        config=config,
        model=model,
        layers=layers,
        searched=tuple(candidates),
        fixed=fixed,
        calibration=calibration,
        test=test,
        train=splits.get("train"),
    )
