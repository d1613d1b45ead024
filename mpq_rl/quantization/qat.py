"""Learned step size quantization (LSQ): fake quantizers with trainable step sizes on the named layers of a model.

LSQ (Esser et al., "Learned Step Size Quantization", ICLR 2020) makes each quantizer's step size ``s`` a parameter.
The forward pass is the usual fake quantization ``x_q = T(x / s) * s``, where ``T`` puts ``v = x / s`` on the
quantizer's grid; the backward pass sends the rounding straight through (STE: gradient 1 inside the grid's range,
0 where clipped) and gives ``s`` the gradient of that expression,

    d x_q / d s = T(v) - v   inside the range,        T(v) (the end of the range it was clipped to) outside,

scaled by ``g = 1 / sqrt(numel * Q_P)`` (paper, section 2.2) so step sizes and weights learn at comparable rates.
For integers ``T(v) = clamp(round(v) + z, q_min, q_max) - z`` and ``Q_P = q_max``: LSQ's eq. 3 exactly. For the
value-table formats (fp, flint; :class:`~mpq_rl.quantization.formats.TableQuantizer`) ``T(v)`` is the nearest table
value,
the range is the table's ``[t_0, t_max]``, and ``Q_P`` generalises to the largest table value ``t_max`` (the
integer table's largest value is ``q_max``): the same formula with the table in place of the integer grid.

Each quantizer is built from the layer's :class:`~mpq_rl.quantization.quant.QuantParams` or table quantizer (the
calibrated
simulator's, :func:`calibrated_scales`) and returns it with the learned scale (:meth:`LsqQuantizer.params`); only
the scale is learned (zero point, integer range, table and axis stay). Weights are per output channel, inputs per
tensor. In eval mode a quantizer runs its parameters' own ``fake_quantize``, the one the
:class:`~mpq_rl.quantization.simulator.QuantSimulator` uses, so a finetuned model is scored (and exported) exactly as
the
simulator would score it with the learned scales.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save
from torch import nn
from torch.nn.utils import parametrize

from mpq_rl.errors import UserError
from mpq_rl.io import atomic_write_bytes
from mpq_rl.quantization import formats
from mpq_rl.quantization.claims import claim_layers, release_layers
from mpq_rl.quantization.policy import BitPair, Policy
from mpq_rl.quantization.quant import Quantizer, QuantParams, broadcast_scale
from mpq_rl.quantization.simulator import QuantSimulator
from mpq_rl.workloads.layers import layer_modules

SCALES_FORMAT = "mpq_rl.lsq_scales/1"
_MIN_SCALE = 1e-12
"""Step sizes are kept positive: a learned scale that reaches zero is held at this floor."""


@dataclass(frozen=True, eq=False)
class LayerScales:
    """The quantizers of one layer at its policy's precision codes: what LSQ starts from and returns, and what
    export writes. ``weight`` is per output channel (axis 0), ``input`` per tensor; None where that side stays in
    floating point. Each is a :class:`~mpq_rl.quantization.quant.QuantParams` (integers) or a
    :class:`~mpq_rl.quantization.formats.TableQuantizer` (fp, flint)."""

    w_bits: int
    a_bits: int
    weight: Quantizer | None
    input: Quantizer | None


def calibrated_scales(simulator: QuantSimulator, policy: Mapping[str, BitPair]) -> dict[str, LayerScales]:
    """The calibrated simulator's quantizers for ``policy``: MSE (or configured) ranges of weights and inputs."""
    return {
        name: LayerScales(w_bits, a_bits, simulator.weight_quantizer(name, w_bits), simulator.activation(name, a_bits))
        for name, (w_bits, a_bits) in policy.items()
    }


def _grad_scaled(x: torch.Tensor, factor: float) -> torch.Tensor:
    """``x`` in the forward pass, its gradient multiplied by ``factor`` in the backward pass (LSQ's gradscale)."""
    return (x - x * factor).detach() + x * factor


class LsqQuantizer(nn.Module):
    """A fake quantizer with a learned step size, started from ``quantizer`` (integer or value table, per tensor
    or per slice along its axis). Used as a weight parametrization (per channel) or on a layer's input."""

    def __init__(self, quantizer: Quantizer) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.as_tensor(quantizer.scale).detach().clone().float())
        self.quantizer = quantizer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.params().fake_quantize(x)
        axis = self.quantizer.axis
        per_sample = x.numel() if axis is not None else x[0].numel()
        scale = self.scale.clamp_min(_MIN_SCALE)
        scale = _grad_scaled(scale, 1.0 / math.sqrt(per_sample * self.quantizer.top_level))
        scale = broadcast_scale(scale, axis, x)
        return self.quantizer.grid_ste(x / scale) * scale

    def params(self) -> Quantizer:
        """The quantizer with the current learned step size."""
        scale = self.scale.detach().clamp_min(_MIN_SCALE)
        return self.quantizer.with_scale(float(scale) if self.quantizer.axis is None else scale)


class LsqAttachment:
    """LSQ quantizers attached to the named layers of a live model (not a copy); :meth:`detach` removes them.

    Weights are quantized through ``torch.nn.utils.parametrize`` (the layer's ``weight`` becomes the quantized
    tensor; the optimizer updates the float weight behind it), inputs through a forward pre-hook. The quantizers
    follow their layer's train/eval mode. :meth:`step_sizes` are the learned parameters; the model's own
    parameters stay the model's.
    """

    def __init__(self, model: nn.Module, scales: Mapping[str, LayerScales]) -> None:
        modules = layer_modules(model)
        for name in scales:
            if name not in modules:
                raise UserError(f"the model has no module named {name!r}: check the policy's layer names")
        claim_layers({name: modules[name] for name in scales}, "quantized by LSQ")
        self.model = model
        self.policy: Policy = {name: (s.w_bits, s.a_bits) for name, s in scales.items()}
        self.weights: dict[str, LsqQuantizer] = {}
        self.inputs: dict[str, LsqQuantizer] = {}
        self._layers = {name: modules[name] for name in scales}
        self._handles = []
        for name, s in scales.items():
            module = modules[name]
            if s.weight is not None:
                quantizer = LsqQuantizer(s.weight)
                parametrize.register_parametrization(module, "weight", quantizer)
                self.weights[name] = quantizer
            if s.input is not None:
                quantizer = LsqQuantizer(s.input)
                quantizer.to(next(module.parameters()).device)
                self.inputs[name] = quantizer
                self._handles.append(module.register_forward_pre_hook(_input_hook(quantizer)))

    def step_sizes(self) -> list[nn.Parameter]:
        """Every learned step size (weights' per-channel vectors and inputs' scalars)."""
        return [q.scale for q in (*self.weights.values(), *self.inputs.values())]

    def scales(self) -> dict[str, LayerScales]:
        """The current (learned) quantizers of every layer, on the CPU."""
        return {
            name: LayerScales(w_bits, a_bits, _on_cpu(self.weights.get(name)), _on_cpu(self.inputs.get(name)))
            for name, (w_bits, a_bits) in self.policy.items()
        }

    def detach(self) -> None:
        """Remove the quantizers: the model keeps its (finetuned) float weights, with no hooks left."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for module in self._layers.values():
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
        release_layers(self._layers.values())


def _on_cpu(quantizer: LsqQuantizer | None) -> Quantizer | None:
    if quantizer is None:
        return None
    params = quantizer.params()
    return params if params.axis is None else params.with_scale(params.scale.cpu().clone())


def _input_hook(quantizer: LsqQuantizer):
    def hook(module: nn.Module, args: tuple) -> tuple:
        quantizer.training = module.training
        return (quantizer(args[0]), *args[1:])

    return hook


def save_scales(path: str | Path, scales: Mapping[str, LayerScales]) -> None:
    """Write the quantizers' scales as safetensors (tensors only) with the precision codes in the file's metadata:
    ``<layer>.weight_scale`` per channel; ``<layer>.input_scale`` with ``input_zero_point`` (integers) or
    ``input_values``, the value table (fp, flint, whose table depends on the input's sign)."""
    tensors: dict[str, torch.Tensor] = {}
    for name, s in scales.items():
        if s.weight is not None:
            tensors[f"{name}.weight_scale"] = s.weight.scale.detach().float().contiguous()
        if s.input is not None:
            tensors[f"{name}.input_scale"] = torch.tensor(s.input.scale, dtype=torch.float32)
            if isinstance(s.input, QuantParams):
                tensors[f"{name}.input_zero_point"] = torch.tensor(s.input.zero_point, dtype=torch.int32)
            else:
                tensors[f"{name}.input_values"] = s.input.table.clone()  # tables are shared (cached)
    bits = {name: [s.w_bits, s.a_bits] for name, s in scales.items()}
    metadata = {"format": SCALES_FORMAT, "bits": json.dumps(bits)}
    atomic_write_bytes(path, save(tensors, metadata=metadata))


def load_scales(path: str | Path) -> dict[str, LayerScales]:
    """Read a file written by :func:`save_scales`."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
    except Exception as exc:
        raise UserError(f"scales file {str(path)!r} cannot be read as safetensors ({type(exc).__name__})") from None
    if metadata.get("format") != SCALES_FORMAT:
        raise UserError(f"scales file {str(path)!r} is not an mpq_rl LSQ scales file (format {SCALES_FORMAT})")
    scales = {}
    for name, (w_bits, a_bits) in json.loads(metadata["bits"]).items():
        w_bits, a_bits = int(w_bits), int(a_bits)
        weight_scale, input_scale = tensors.get(f"{name}.weight_scale"), tensors.get(f"{name}.input_scale")
        weight = None
        if weight_scale is not None:
            weight = formats.format_for(w_bits).weight_quantizer_with_scale(weight_scale, formats.bits_of(w_bits))
        activation = None
        if input_scale is not None:
            table = tensors.get(f"{name}.input_values")
            activation = (
                QuantParams(float(input_scale), int(tensors[f"{name}.input_zero_point"]), 0, 2**a_bits - 1)
                if table is None
                else formats.TableQuantizer(float(input_scale), table, a_bits)
            )
        scales[name] = LayerScales(w_bits, a_bits, weight, activation)
    return scales
