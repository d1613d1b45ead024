"""Uniform affine fake quantization: quantizer parameters, range selection, and the straight-through estimator.

Conventions follow the quantization survey of Gholami et al. (2021): ``x_q = (clamp(round(x / s) + z, q_min,
q_max) - z) * s``. Weights are symmetric per output channel (narrow range, ``[-(2^(b-1) - 1), 2^(b-1) - 1]``);
activations are per tensor, unsigned ``[0, 2^b - 1]`` when the calibration data are non-negative, asymmetric
otherwise. Bit-widths 16 and 32 mean "leave in floating point". Rounding is passed straight through in the
backward pass (STE, zero gradient where the value was clipped), using PyTorch's fused fake-quantize kernels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from mpq_rl.config import FLOAT_BITS

RangeMethod = Literal["mse", "minmax", "percentile"]
_COARSE_GRID = 40
_FINE_GRID = 20


def is_float_bits(bits: int) -> bool:
    """True for the bit-widths that mean "not quantized"."""
    return bits in FLOAT_BITS


@dataclass(frozen=True)
class ActivationQuantizer:
    """Per-tensor affine quantizer parameters for one activation at one bit-width."""

    scale: float
    zero_point: int
    q_min: int
    q_max: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, self.q_min, self.q_max)

    def values(self, x: torch.Tensor) -> torch.Tensor:
        """The quantized values of ``x`` by plain elementwise arithmetic: no gradient, several times faster on CPU
        than the fused kernel (which also builds the STE mask); used to score candidate ranges."""
        levels = torch.clamp(torch.round(x * (1.0 / self.scale)) + self.zero_point, self.q_min, self.q_max)
        return (levels - self.zero_point) * self.scale


def symmetric_levels(bits: int) -> int:
    """The largest integer level of a narrow-range symmetric quantizer (``2^(b-1) - 1``)."""
    return 2 ** (bits - 1) - 1


def fake_quantize_weight_per_channel(weight: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric per-output-channel fake quantization of ``weight`` (channel axis 0) with STE gradients."""
    q_max = symmetric_levels(bits)
    zero = torch.zeros(scale.numel(), dtype=torch.int32, device=weight.device)
    return torch.fake_quantize_per_channel_affine(weight, scale.to(weight.dtype), zero, 0, -q_max, q_max)


def _per_channel_error(values: torch.Tensor, clip: torch.Tensor, q_max: int) -> torch.Tensor:
    """Squared quantization error per row of ``values`` [C, N] for symmetric clip values ``clip`` [C]."""
    scale = (clip / q_max).clamp_min(torch.finfo(values.dtype).tiny).unsqueeze(1)
    quantized = torch.clamp(torch.round(values / scale), -q_max, q_max) * scale
    return (quantized - values).pow(2).sum(dim=1)


def mse_ratio_search(error_of_ratio, lo: float = 0.02, hi: float = 1.0) -> torch.Tensor:
    """Per-row best clipping ratio in [lo, hi]: a coarse grid, then a fine grid around each row's best."""
    coarse = torch.linspace(lo, hi, _COARSE_GRID)
    errors = torch.stack([error_of_ratio(torch.full_like(coarse[:1], r)) for r in coarse.tolist()])
    best = coarse[errors.argmin(dim=0)]
    step = (hi - lo) / (_COARSE_GRID - 1)
    best_error = errors.min(dim=0).values
    for offset in torch.linspace(-step, step, _FINE_GRID).tolist():
        ratio = (best + offset).clamp(lo, hi)
        err = error_of_ratio(ratio)
        better = err < best_error
        best = torch.where(better, ratio, best)
        best_error = torch.where(better, err, best_error)
    return best


def weight_scale(
    weight: torch.Tensor, bits: int, method: RangeMethod = "mse", percentile: float = 99.99
) -> torch.Tensor:
    """Per-output-channel scales of a symmetric ``bits``-bit quantizer for ``weight``, chosen by ``method``."""
    rows = weight.detach().reshape(weight.shape[0], -1).float()
    q_max = symmetric_levels(bits)
    abs_max = rows.abs().amax(dim=1)
    if method == "minmax":
        clip = abs_max
    elif method == "percentile":
        clip = torch.quantile(rows.abs(), percentile / 100.0, dim=1)
    else:
        clip = abs_max * mse_ratio_search(lambda r: _per_channel_error(rows, abs_max * r, q_max))
    return (clip / q_max).clamp_min(torch.finfo(torch.float32).tiny)


def quantize_weight(
    weight: torch.Tensor, bits: int, method: RangeMethod = "mse", percentile: float = 99.99
) -> torch.Tensor:
    """The fake-quantized copy of ``weight`` at ``bits`` (returned unchanged for floating-point bits)."""
    if is_float_bits(bits):
        return weight
    with torch.no_grad():
        scale = weight_scale(weight, bits, method, percentile)
        return fake_quantize_weight_per_channel(weight, scale, bits)


def _affine(lo: float, hi: float, bits: int, unsigned: bool) -> ActivationQuantizer:
    q_max = 2**bits - 1
    if unsigned:
        return ActivationQuantizer(max(hi, 1e-12) / q_max, 0, 0, q_max)
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max(hi - lo, 1e-12) / q_max
    zero_point = int(min(max(round(-lo / scale), 0), q_max))
    return ActivationQuantizer(scale, zero_point, 0, q_max)


def activation_quantizer(
    sample: torch.Tensor,
    lo: float,
    hi: float,
    bits: int,
    method: RangeMethod = "mse",
    percentile: float = 99.99,
) -> ActivationQuantizer:
    """A per-tensor quantizer for an activation observed in ``[lo, hi]`` with value ``sample`` (1-D).

    Unsigned when ``lo >= 0``. ``mse`` shrinks the observed range by the ratio that minimizes the squared error on
    the sample; ``percentile`` clips at the given percentile of the sample (both tails when signed).
    """
    unsigned = lo >= 0.0
    if method == "minmax":
        return _affine(lo, hi, bits, unsigned)
    if method == "percentile":
        p = percentile / 100.0
        top = float(torch.quantile(sample, p))
        bottom = 0.0 if unsigned else float(torch.quantile(sample, 1.0 - p))
        return _affine(bottom, top, bits, unsigned)

    def error(ratio: torch.Tensor) -> torch.Tensor:
        quantizer = _affine(lo * float(ratio), hi * float(ratio), bits, unsigned)
        return (quantizer.values(sample) - sample).pow(2).sum().reshape(1)

    ratio = float(mse_ratio_search(error)[0])
    return _affine(lo * ratio, hi * ratio, bits, unsigned)


def quantization_error(x: torch.Tensor, x_q: torch.Tensor) -> float:
    """Relative squared error ``||x_q - x||^2 / ||x||^2``."""
    denom = float(x.pow(2).sum())
    return float((x_q - x).pow(2).sum()) / denom if denom > 0 else 0.0
