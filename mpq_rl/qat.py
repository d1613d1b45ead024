"""Learned step size quantization (LSQ): fake quantizers with trainable step sizes on the named layers of a model.

LSQ (Esser et al., "Learned Step Size Quantization", ICLR 2020) makes each quantizer's step size ``s`` a parameter.
The forward pass is the usual fake quantization ``(clamp(round(x / s) + z, q_min, q_max) - z) * s``; the backward
pass sends the rounding straight through (STE: gradient 1 inside the range, 0 where clipped) and gives ``s`` the
gradient of that expression (``round(x / s) - x / s`` inside, the clip level outside), scaled by
``g = 1 / sqrt(numel * q_max)`` (paper, section 2.2) so step sizes and weights learn at comparable rates.

The quantizers follow mpq_rl's conventions (:mod:`mpq_rl.quant`): weights symmetric per output channel in the
narrow range ``[-(2^(b-1) - 1), 2^(b-1) - 1]``, activations per tensor in ``[0, 2^b - 1]`` with a zero point (0
for non-negative inputs). They start from the calibrated simulator's ranges (:class:`LayerScales`); the zero point
stays at its calibrated value and only the step size is learned. In eval mode a quantizer runs PyTorch's fused
fake-quantize kernels, the very ones :class:`~mpq_rl.simulator.QuantSimulator` uses, so a finetuned model is
scored (and exported) exactly as the simulator would score it with the learned scales.
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
from mpq_rl.layers import layer_modules
from mpq_rl.policy import BitPair, Policy
from mpq_rl.quant import is_float_bits, symmetric_levels, weight_scale
from mpq_rl.simulator import _ATTACHED, QuantSimulator

SCALES_FORMAT = "mpq_rl.lsq_scales/1"
_MIN_SCALE = 1e-12
"""Step sizes are kept positive: a learned scale that reaches zero is held at this floor."""


@dataclass(frozen=True)
class LayerScales:
    """The quantizer parameters of one layer at its policy bits: what LSQ starts from and what export writes.

    ``weight_scale`` is per output channel (None for floating-point weights); the input quantizer is per tensor
    with levels ``[0, 2^a_bits - 1]`` and ``input_zero_point`` (``input_scale`` None for floating-point inputs).
    """

    w_bits: int
    a_bits: int
    weight_scale: torch.Tensor | None
    input_scale: float | None
    input_zero_point: int = 0

    @property
    def weight_q_max(self) -> int:
        return symmetric_levels(self.w_bits)

    @property
    def input_q_max(self) -> int:
        return 2**self.a_bits - 1


def calibrated_scales(simulator: QuantSimulator, policy: Mapping[str, BitPair]) -> dict[str, LayerScales]:
    """The calibrated simulator's quantizers for ``policy``: MSE (or configured) ranges of weights and inputs."""
    scales = {}
    for name, (w_bits, a_bits) in policy.items():
        weight = None
        if not is_float_bits(w_bits):
            weight = weight_scale(simulator.fp32_weights[name], w_bits, simulator.weight_range, simulator.percentile)
        activation = simulator.activation(name, a_bits)
        scales[name] = LayerScales(
            w_bits,
            a_bits,
            weight,
            None if activation is None else float(activation.scale),
            0 if activation is None else int(activation.zero_point),
        )
    return scales


def _grad_scaled(x: torch.Tensor, factor: float) -> torch.Tensor:
    """``x`` in the forward pass, its gradient multiplied by ``factor`` in the backward pass (LSQ's gradscale)."""
    return (x - x * factor).detach() + x * factor


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return (x.round() - x).detach() + x


class LsqQuantizer(nn.Module):
    """A fake quantizer with a learned step size: per output channel (``channel_axis=0``) or per tensor (None).

    Used as a weight parametrization (per channel, symmetric) or on a layer's input (per tensor, zero point).
    """

    def __init__(self, scale: torch.Tensor, zero_point: int, q_min: int, q_max: int, channel_axis: int | None) -> None:
        super().__init__()
        self.scale = nn.Parameter(scale.detach().clone().float())
        self.zero_point = zero_point
        self.q_min = q_min
        self.q_max = q_max
        self.channel_axis = channel_axis

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.scale.clamp_min(_MIN_SCALE)
        if not self.training:
            return self._fused(x, scale.detach())
        per_sample = x.numel() if self.channel_axis is not None else x[0].numel()
        scale = _grad_scaled(scale, 1.0 / math.sqrt(per_sample * self.q_max))
        if self.channel_axis is not None:
            scale = scale.reshape(-1, *([1] * (x.dim() - 1)))
        levels = torch.clamp(_round_ste(x / scale) + self.zero_point, self.q_min, self.q_max)
        return (levels - self.zero_point) * scale

    def _fused(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        if self.channel_axis is None:
            return torch.fake_quantize_per_tensor_affine(x, float(scale), self.zero_point, self.q_min, self.q_max)
        zero = torch.zeros(scale.numel(), dtype=torch.int32, device=x.device)
        return torch.fake_quantize_per_channel_affine(
            x, scale.to(x.dtype), zero, self.channel_axis, self.q_min, self.q_max
        )


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
            if getattr(modules[name], _ATTACHED, False):
                raise UserError(f"layer {name!r} is already quantized (a QuantSimulator or LSQ): detach that first")
        self.model = model
        self.policy: Policy = {name: (s.w_bits, s.a_bits) for name, s in scales.items()}
        self.weights: dict[str, LsqQuantizer] = {}
        self.inputs: dict[str, LsqQuantizer] = {}
        self._layers = {name: modules[name] for name in scales}
        self._handles = []
        for name, s in scales.items():
            module = modules[name]
            if s.weight_scale is not None:
                quantizer = LsqQuantizer(s.weight_scale, 0, -s.weight_q_max, s.weight_q_max, channel_axis=0)
                parametrize.register_parametrization(module, "weight", quantizer)
                self.weights[name] = quantizer
            if s.input_scale is not None:
                quantizer = LsqQuantizer(torch.tensor(s.input_scale), s.input_zero_point, 0, s.input_q_max, None)
                quantizer.to(next(module.parameters()).device)
                self.inputs[name] = quantizer
                self._handles.append(module.register_forward_pre_hook(_input_hook(quantizer)))
            setattr(module, _ATTACHED, True)

    def step_sizes(self) -> list[nn.Parameter]:
        """Every learned step size (weights' per-channel vectors and inputs' scalars)."""
        return [q.scale for q in (*self.weights.values(), *self.inputs.values())]

    def scales(self) -> dict[str, LayerScales]:
        """The current (learned) quantizer parameters of every layer."""
        result = {}
        for name, (w_bits, a_bits) in self.policy.items():
            weight, act = self.weights.get(name), self.inputs.get(name)
            result[name] = LayerScales(
                w_bits,
                a_bits,
                None if weight is None else weight.scale.detach().clamp_min(_MIN_SCALE).cpu().clone(),
                None if act is None else float(act.scale.detach().clamp_min(_MIN_SCALE)),
                0 if act is None else act.zero_point,
            )
        return result

    def detach(self) -> None:
        """Remove the quantizers: the model keeps its (finetuned) float weights, with no hooks left."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for module in self._layers.values():
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
            if hasattr(module, _ATTACHED):
                delattr(module, _ATTACHED)


def _input_hook(quantizer: LsqQuantizer):
    def hook(module: nn.Module, args: tuple) -> tuple:
        quantizer.training = module.training
        return (quantizer(args[0]), *args[1:])

    return hook


def save_scales(path: str | Path, scales: Mapping[str, LayerScales]) -> None:
    """Write the quantizer parameters as safetensors (tensors only) with the bits in the file's metadata."""
    tensors: dict[str, torch.Tensor] = {}
    for name, s in scales.items():
        if s.weight_scale is not None:
            tensors[f"{name}.weight_scale"] = s.weight_scale.detach().float().contiguous()
        if s.input_scale is not None:
            tensors[f"{name}.input_scale"] = torch.tensor(s.input_scale, dtype=torch.float32)
            tensors[f"{name}.input_zero_point"] = torch.tensor(s.input_zero_point, dtype=torch.int32)
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
        input_scale = tensors.get(f"{name}.input_scale")
        zero_point = tensors.get(f"{name}.input_zero_point")
        scales[name] = LayerScales(
            int(w_bits),
            int(a_bits),
            tensors.get(f"{name}.weight_scale"),
            None if input_scale is None else float(input_scale),
            0 if zero_point is None else int(zero_point),
        )
    return scales
