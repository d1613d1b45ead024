"""Layer discovery: the table of quantizable layers of any PyTorch model, measured from one real forward pass.

Layers are named by their fully qualified module name (``model.named_modules()``), listed in the order they first
run, and described by what the forward pass actually did (shapes, MACs, calls), so the table is right for residual
blocks, shared modules, inputs of any rank and Hugging Face transformers alike, without rewriting the model.
``nn.MultiheadAttention`` contributes its projections (``<attention>.in_proj`` and ``<attention>.out_proj``, see
:mod:`mpq_rl.workloads.attention`). The same pass records which weights the model multiplies with
(:mod:`mpq_rl.workloads.coverage`),
so the table says what share of them it covers and names the rest.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from mpq_rl.errors import UserError
from mpq_rl.workloads import attention
from mpq_rl.workloads.coverage import weight_uses
from mpq_rl.workloads.model_io import batch_size_of, call_model, first_samples, output_tensor

QUANTIZABLE_TYPES: dict[type[nn.Module], str] = {
    nn.Conv1d: "conv1d",
    nn.Conv2d: "conv2d",
    nn.Conv3d: "conv3d",
    nn.Linear: "linear",
}


@dataclass(frozen=True)
class Layer:
    """One quantizable layer. Shapes exclude the batch dimension; ``macs`` is per sample, summed over calls."""

    name: str
    index: int
    kind: str
    weight_shape: tuple[int, ...]
    in_channels: int
    out_channels: int
    groups: int
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    params: int
    macs: int
    calls: int = 1

    @property
    def is_linear(self) -> bool:
        return self.kind == "linear"

    @property
    def is_depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.in_channels

    @property
    def kernel_size(self) -> int:
        """Number of kernel taps (1 for a linear layer)."""
        return math.prod(self.kernel)

    @property
    def reduction(self) -> int:
        """Length of the dot product behind each output value (``in_channels / groups * kernel taps``)."""
        return self.in_channels // self.groups * self.kernel_size

    @property
    def input_elements(self) -> int:
        """Input activation values per sample, summed over calls."""
        return math.prod(self.input_shape) * self.calls

    @property
    def output_elements(self) -> int:
        """Output activation values per sample, summed over calls."""
        return math.prod(self.output_shape) * self.calls


@dataclass(frozen=True)
class LayerTable:
    """The quantizable layers of a model in execution order; serializable to and from plain dicts."""

    layers: tuple[Layer, ...]
    model_name: str = ""
    example_batch: int = 1
    extra: dict[str, Any] = field(default_factory=dict)
    left_out: dict[str, str] = field(default_factory=dict)
    """Quantizable modules that run but are not in the table, each with the reason (e.g. its output never
    reaches the model's output): they are not searched, stay FP32 and cost nothing."""
    weights_covered: int = 0
    """Weight values (elements) of the table's layers."""
    not_covered: dict[str, int] = field(default_factory=dict)
    """Parameters the model multiplies with that no layer of the table holds (name -> elements), e.g. weights of
    modules mpq_rl cannot quantize or used through ``torch.nn.functional``: they stay FP32 and cost nothing."""

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def __getitem__(self, key: int | str) -> Layer:
        if isinstance(key, str):
            return self.layers[self.index_of(key)]
        return self.layers[key]

    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def index_of(self, name: str) -> int:
        for i, layer in enumerate(self.layers):
            if layer.name == name:
                return i
        raise UserError(f"unknown layer {name!r}: the model's quantizable layers are {_preview(self.names)}")

    @property
    def total_macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def total_params(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def coverage(self) -> float:
        """The share of the model's weights (values multiplied with activations) that the table's layers hold."""
        total = self.weights_covered + sum(self.not_covered.values())
        return self.weights_covered / total if total else 1.0

    def coverage_line(self) -> str:
        """One line: the coverage share, and the uncovered weights by name (largest first)."""
        line = f"weights covered: {self.coverage:.2%} ({self.weights_covered:,} values)"
        if self.not_covered:
            ranked = sorted(self.not_covered.items(), key=lambda item: -item[1])
            line += "; not covered (FP32, not costed): " + _preview(f"{name} ({size:,})" for name, size in ranked)
        return line

    def select(self, include: str | None = None, exclude: str | None = None) -> list[str]:
        """Names matching ``include`` (all when None) and not ``exclude``, both regexes searched in the name."""
        chosen = [
            n
            for n in self.names
            if (include is None or re.search(include, n)) and not (exclude is not None and re.search(exclude, n))
        ]
        if not chosen:
            raise UserError(
                f"quantization.include={include!r} / exclude={exclude!r} leave no layer to search; "
                f"layers are {_preview(self.names)}"
            )
        return chosen

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "example_batch": self.example_batch,
            "extra": dict(self.extra),
            "left_out": dict(self.left_out),
            "weights_covered": self.weights_covered,
            "not_covered": dict(self.not_covered),
            "layers": [asdict(layer) for layer in self.layers],
        }


def _preview(names: Iterable[str], limit: int = 8) -> str:
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def layer_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every module of ``model`` by name, plus the projections of its attention modules (routing them, see
    :mod:`mpq_rl.workloads.attention`): the namespace in which layers are looked up."""
    projections = attention.route(model)
    return {**dict(model.named_modules()), **projections}


def quantizable_kind(module: nn.Module) -> str | None:
    """The layer kind of ``module`` if mpq_rl can quantize it (subclasses of Conv/Linear included)."""
    for cls, kind in QUANTIZABLE_TYPES.items():
        if isinstance(module, cls):
            return kind
    return None


def unreachable_layers(model: nn.Module, example: Any, names: Iterable[str]) -> list[str]:
    """Those of the modules ``names`` whose output cannot influence the model's output.

    One forward pass on two samples of ``example`` with autograd recording, then a walk of the autograd graph
    back from the output: a module whose output node is never met (e.g. a BERT pooler under a mean-pooled
    embedding) feeds nothing the model returns. Parameters' ``requires_grad`` flags are restored afterwards.
    """
    modules = layer_modules(model)
    produced: dict[str, list[Any]] = {name: [] for name in names}
    flags = {p: p.requires_grad for p in model.parameters()}
    handles = []
    for name in produced:

        def hook(module: nn.Module, args: tuple, output: Any, name: str = name) -> None:
            produced[name].append(output.grad_fn)

        handles.append(modules[name].register_forward_hook(hook))
    try:
        for name in produced:
            modules[name].weight.requires_grad_(True)
        with torch.enable_grad():
            output = output_tensor(call_model(model, first_samples(example, 2)))
        if output.grad_fn is None:  # the model records no graph (e.g. it runs under no_grad): nothing to tell
            return []
        seen: set[Any] = set()
        stack = [output.grad_fn]
        while stack:
            node = stack.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            stack.extend(next_node for next_node, _ in node.next_functions)
    finally:
        for handle in handles:
            handle.remove()
        for parameter, flag in flags.items():
            parameter.requires_grad_(flag)
    return [name for name, nodes in produced.items() if not any(node in seen for node in nodes)]


def discover_layers(model: nn.Module, example: Any, model_name: str = "") -> LayerTable:
    """Run ``model`` once on ``example`` (a batch) and return its quantizable layers in execution order.

    Modules whose output never reaches the model's output are left out of the table (see
    :func:`unreachable_layers`) and listed in :attr:`LayerTable.left_out`.
    """
    batch = batch_size_of(example)
    records: dict[str, dict[str, Any]] = {}
    order: list[str] = []
    handles = []

    def make_hook(name: str, kind: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            x = args[0]
            per_sample_out = output.numel() // batch
            if kind == "linear":
                macs = per_sample_out * module.in_features
            else:
                macs = per_sample_out * (module.in_channels // module.groups) * math.prod(module.kernel_size)
            if name not in records:
                order.append(name)
                records[name] = {
                    "input_shape": tuple(x.shape[1:]),
                    "output_shape": tuple(output.shape[1:]),
                    "macs": 0,
                    "calls": 0,
                }
            records[name]["macs"] += macs
            records[name]["calls"] += 1

        return hook

    modules = layer_modules(model)
    for name, module in modules.items():
        kind = quantizable_kind(module)
        if kind is not None:
            handles.append(module.register_forward_hook(make_hook(name, kind)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), weight_uses(model) as used:
            call_model(model, example)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)

    if not order:
        raise UserError(
            f"model {model_name or type(model).__name__} has no quantizable layer that runs in forward "
            "(mpq_rl quantizes nn.Conv1d/2d/3d and nn.Linear modules)"
        )
    empty = next((name for name in order if modules[name].weight.numel() == 0), None)
    if empty is not None:
        raise UserError(
            f"model {model_name or type(model).__name__}: layer {empty!r} has no weights (shape "
            f"{tuple(modules[empty].weight.shape)}): give every layer at least one input and one output feature"
        )
    was_training = model.training
    model.eval()
    try:
        dead = unreachable_layers(model, example, order)
    finally:
        model.train(was_training)
    if len(dead) == len(order):
        raise UserError(
            f"model {model_name or type(model).__name__}: no quantizable layer's output reaches the model's output"
        )
    left_out = {name: "its output never reaches the model's output" for name in dead}
    order = [name for name in order if name not in left_out]
    layers = []
    for index, name in enumerate(order):
        module = modules[name]
        kind = quantizable_kind(module)
        rec = records[name]
        if kind == "linear":
            in_ch, out_ch, groups, kernel, stride = module.in_features, module.out_features, 1, (1,), (1,)
        else:
            in_ch, out_ch, groups = module.in_channels, module.out_channels, module.groups
            kernel, stride = tuple(module.kernel_size), tuple(module.stride)
        layers.append(
            Layer(
                name=name,
                index=index,
                kind=kind,
                weight_shape=tuple(module.weight.shape),
                in_channels=in_ch,
                out_channels=out_ch,
                groups=groups,
                kernel=kernel,
                stride=stride,
                input_shape=rec["input_shape"],
                output_shape=rec["output_shape"],
                params=module.weight.numel() + (0 if module.bias is None else module.bias.numel()),
                macs=int(rec["macs"]),
                calls=rec["calls"],
            )
        )
    names = {id(p): name for name, p in model.named_parameters()}
    covered = {names[id(modules[name].weight)]: modules[name].weight.numel() for name in order}
    dead = {names.get(id(modules[name].weight)) for name in left_out}
    parameters = dict(model.named_parameters())
    not_covered = {n: parameters[n].numel() for n in sorted(used) if n not in covered and n not in dead}
    return LayerTable(
        tuple(layers),
        model_name=model_name,
        example_batch=batch,
        left_out=left_out,
        weights_covered=sum(covered.values()),
        not_covered=not_covered,
    )
