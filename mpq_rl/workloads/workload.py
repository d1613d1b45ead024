"""A workload: the model, its data and its layer table, assembled from the configuration's sections.

This is the first stage of the data path (model -> layer table -> cost table -> environment -> agent ->
evaluator -> logger): everything downstream receives a :class:`Workload` or pieces of it, never the config.
:func:`load_workload` and :func:`assemble_workload` are where the model, data and quantization sections
(:class:`WorkloadSettings`, taken out of a run configuration by :mod:`mpq_rl.runs.assembly`) are resolved into it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import Dataset

from mpq_rl import status
from mpq_rl.errors import UserError
from mpq_rl.quantization.bits import REFERENCE_BITS
from mpq_rl.quantization.policy import Policy
from mpq_rl.quantization.settings import QuantizationConfig
from mpq_rl.quantization.simulator import RangeSettings
from mpq_rl.workloads.data import Batches, Splits, check_proxy_data, load_data, make_batches
from mpq_rl.workloads.device import resolve_device
from mpq_rl.workloads.layers import LayerTable, discover_layers
from mpq_rl.workloads.model_io import call_model, output_tensor
from mpq_rl.workloads.models import build_model
from mpq_rl.workloads.settings import DataConfig, ModelConfig


@dataclass(frozen=True)
class WorkloadSettings:
    """The sections a workload is built from: the model, its data, its quantization, where it runs, the seed
    (calibration sampling, range percentiles) and the proxy metric the data must be able to score."""

    model: ModelConfig
    data: DataConfig
    quantization: QuantizationConfig
    device: str
    seed: int
    proxy_metric: str


@dataclass
class Workload:
    """What a run quantizes: the model, its calibration/test batches, its layers, which layers are searched, and
    how the simulator calibrates its ranges."""

    model: nn.Module
    layers: LayerTable
    searched: tuple[str, ...]
    fixed: Policy
    ranges: RangeSettings
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    """Where the model and the batches are (``device`` in the config)."""
    example: object = field(default=None, repr=False)
    """An input batch (layer discovery measured the layers on it; export traces it)."""
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


def resolve_pins(pin: dict[str, list[int]], layers: LayerTable) -> Policy:
    """``quantization.pin`` by layer name; a layer pinned twice (by ``first``/``last`` and by name) is refused."""
    pinned: Policy = {}
    given: dict[str, str] = {}
    for key, bits in pin.items():
        name = resolve_layer_name(key, layers)
        if name in pinned:
            raise UserError(
                f"quantization.pin gives layer {name!r} twice (as {given[name]!r} and as {key!r}): keep one of them"
            )
        pinned[name], given[name] = (bits[0], bits[1]), key
    return pinned


def check_data(model: nn.Module, calibration: Batches, test: Batches | None) -> None:
    """Refuse data the search would score as nonsense, before the search: inputs that are not finite, labels that
    are not class ids of the model's output, and splits the model cannot run (one forward pass on the first
    batch of each split, so a test split of the wrong shape fails now, not after the search)."""
    splits = {"calibration": calibration} if test is None else {"calibration": calibration, "test": test}
    shapes = {}
    for split, batches in splits.items():
        for number, (inputs, _) in enumerate(batches, start=1):
            if not finite(inputs):
                raise UserError(
                    f"the {split} split has NaN or infinite inputs (batch {number}): clean or drop those samples"
                )
        outputs = _first_outputs(model, batches, split)
        shapes[split] = tuple(outputs.shape[1:])
        if not torch.isfinite(outputs).all():
            raise UserError(
                f"the model's FP32 output on the {split} split's first batch is NaN or infinite: check the model's "
                "weights (model.weights) and its inputs"
            )
        if batches.has_targets:
            # a sequence model's outputs are [batch, positions, classes], with one label per position
            positions = outputs.dim() == 3
            classes = outputs.shape[-1] if positions else outputs[0].numel()
            check_labels([targets for _, targets in batches], split, classes, positions)
    if test is not None and shapes["test"] != shapes["calibration"]:
        raise UserError(
            f"the model's output is {list(shapes['calibration'])} per sample on the calibration split but "
            f"{list(shapes['test'])} on the test split: give both splits inputs of the same shape"
        )


def finite(value: object) -> bool:
    """Whether every floating-point tensor in ``value`` (a tensor, or a dict, tuple or list of them) is finite."""
    if isinstance(value, torch.Tensor):
        return not value.is_floating_point() or bool(torch.isfinite(value).all())
    if isinstance(value, dict):
        return all(finite(v) for v in value.values())
    if isinstance(value, (tuple, list)):
        return all(finite(v) for v in value)
    return True


def check_labels(batches: Sequence[object], split: str, classes: int, positions: bool = False) -> None:
    """Refuse labels (one batch of them per item) that are not one integer class id in ``[0, classes)`` per
    sample (per sample and position with ``positions``)."""
    for targets in batches:
        if not isinstance(targets, torch.Tensor) or targets.dim() != 1 + positions:
            shape = list(targets.shape[1:]) if isinstance(targets, torch.Tensor) else type(targets).__name__
            raise UserError(
                f"the {split} split's labels must be one class id per sample, got {shape} per sample: "
                "give each item an integer label"
            )
        if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
            raise UserError(
                f"the {split} split's labels are {str(targets.dtype).removeprefix('torch.')}, not integer class "
                "ids: convert them (e.g. labels.long()), or drop them and use proxy.metric: fidelity"
            )
    low, high = min(int(t.min()) for t in batches), max(int(t.max()) for t in batches)
    if low < 0 or high >= classes:
        raise UserError(
            f"the {split} split has labels from {low} to {high}, but the model has {classes} output classes:"
            f" labels must be class ids 0 to {classes - 1}"
        )


def _first_outputs(model: nn.Module, batches: Batches, split: str) -> torch.Tensor:
    """The model's FP32 output on the first batch of a split; a model that cannot run it is a user error."""
    inputs = batches.example()
    try:
        with torch.no_grad():
            return output_tensor(call_model(model, inputs)).float()
    except UserError:
        raise
    except Exception as exc:
        reason = " ".join(str(exc).split())[:300]
        raise UserError(
            f"the model cannot run the {split} split's first batch ({type(exc).__name__}: {reason}): "
            "give inputs of the shape and type the model takes"
        ) from None


def example_input(model: ModelConfig, calibration: Batches | None, device: torch.device | None = None) -> object:
    """A batch for layer discovery: the first calibration batch, or zeros of ``model.input_shape``."""
    if calibration is not None:
        return calibration.example()
    if model.input_shape is None:
        raise UserError("with no data, give model.input_shape (e.g. [1, 3, 224, 224]) so the layers can be measured")
    return torch.zeros(model.input_shape, device=device)


def load_workload(settings: WorkloadSettings, with_data: bool = True) -> Workload:
    """Build the model, load the data and measure the layer table for ``settings``."""
    resolve_device(settings.device)  # a missing GPU is reported before the model and data load
    status.say(f"loading the model ({settings.model.source})")
    model = build_model(settings.model)
    if with_data:
        status.say(f"loading the data ({settings.data.factory or settings.data.name})")
    splits = load_data(settings.data, model) if with_data else {}
    return assemble_workload(settings, model, splits)


def assemble_workload(settings: WorkloadSettings, model: nn.Module, splits: Splits) -> Workload:
    """A workload from a model and data splits already in hand (``{"calibration", "test", "train"}``).

    ``settings`` still supply the device, the bit candidates, layer selection, range calibration, batch size and
    seed; the model and batches are moved to the device.
    """
    device = resolve_device(settings.device)
    model.eval().to(device)
    calibration = test = None
    if splits:
        check_proxy_data(splits, settings.proxy_metric)
        calibration = make_batches(
            splits["calibration"], settings.data.batch_size, limit=settings.data.calibration_samples, seed=settings.seed
        ).to(device)
        if "test" in splits:
            test = make_batches(splits["test"], settings.data.batch_size).to(device)
        check_data(model, calibration, test)
    example = example_input(settings.model, calibration, device)
    status.say("finding the quantizable layers (one forward pass)")
    layers = discover_layers(model, example, model_name=settings.model.source)

    quant = settings.quantization
    a_fixed = REFERENCE_BITS[1] if quant.activation_bits else quant.activation_candidates[0]
    pinned = resolve_pins(quant.pin, layers)
    candidates = [name for name in layers.select(quant.include, quant.exclude) if name not in pinned]
    if not candidates:
        raise UserError("every selected layer is pinned: un-pin a layer or widen quantization.include")
    fixed = {name: pinned.get(name, (REFERENCE_BITS[0], a_fixed)) for name in layers.names if name not in candidates}
    return Workload(
        model=model,
        layers=layers,
        searched=tuple(candidates),
        fixed=fixed,
        ranges=RangeSettings(quant.weight_range, quant.activation_range, quant.percentile, settings.seed),
        device=device,
        example=example,
        calibration=calibration,
        test=test,
        train=splits.get("train"),
    )
