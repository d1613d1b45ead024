"""Uniform affine quantization: the one quantizer type (:class:`QuantParams`), range selection, and the STE.

Conventions follow the quantization survey of Gholami et al. (2021): ``x_q = (clamp(round(x / s) + z, q_min,
q_max) - z) * s``. Weights are symmetric per output channel (narrow range, ``[-(2^(b-1) - 1), 2^(b-1) - 1]``);
activations are per tensor, unsigned ``[0, 2^b - 1]`` when the calibration data are non-negative, asymmetric
otherwise. Bit-widths 16 and 32 mean "leave in floating point". Rounding is passed straight through in the
backward pass (STE, zero gradient where the value was clipped), using PyTorch's fused fake-quantize kernels.

A quantizer's parameters (scale, zero point, integer range, axis) are one :class:`QuantParams`, with
``fake_quantize`` (STE, for QAT and the fallback path), ``values`` (no gradient, for range search),
``integers`` (for export) and ``grid_ste`` (LSQ); the simulator, LSQ (:mod:`mpq_rl.qat`) and export use it.
The value-table formats' :class:`~mpq_rl.formats.TableQuantizer` has the same operations (:class:`Quantizer`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal, Protocol

import torch

from mpq_rl.config import FLOAT_BITS

RangeMethod = Literal["mse", "minmax", "percentile"]
_COARSE_GRID = 40
_FINE_GRID = 20


def is_float_bits(bits: int) -> bool:
    """True for the bit-widths that mean "not quantized"."""
    return bits in FLOAT_BITS


class Quantizer(Protocol):
    """What every quantizer offers, integer (:class:`QuantParams`) or value table
    (:class:`mpq_rl.formats.TableQuantizer`): the simulator, LSQ and export use only this."""

    scale: float | torch.Tensor
    axis: int | None

    def fake_quantize(self, x: torch.Tensor) -> torch.Tensor: ...
    def values(self, x: torch.Tensor) -> torch.Tensor: ...
    def integers(self, x: torch.Tensor) -> torch.Tensor: ...
    def grid_ste(self, units: torch.Tensor) -> torch.Tensor: ...
    def with_scale(self, scale: float | torch.Tensor) -> Quantizer: ...
    @property
    def top_level(self) -> float: ...


@dataclass(frozen=True, eq=False)
class QuantParams:
    """One uniform affine quantizer, ``x_q = (clamp(round(x / scale) + zero_point, q_min, q_max) - zero_point) *
    scale``: per tensor (``axis`` None, ``scale`` a float) or per slice along ``axis`` (``scale`` a 1-D tensor,
    the same zero point for every slice). The simulator, LSQ and export all quantize through this one type.
    """

    scale: float | torch.Tensor
    zero_point: int
    q_min: int
    q_max: int
    axis: int | None = None

    @classmethod
    def symmetric(cls, scale: torch.Tensor, bits: int, axis: int = 0) -> QuantParams:
        """The narrow-range symmetric quantizer (``[-(2^(b-1) - 1), 2^(b-1) - 1]``, zero point 0) of weights."""
        q_max = symmetric_levels(bits)
        return cls(scale, 0, -q_max, q_max, axis)

    def fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        """``x_q`` by PyTorch's fused kernels, with the straight-through gradient (zero where clipped)."""
        if self.axis is None:
            return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, self.q_min, self.q_max)
        zero = torch.full((self.scale.numel(),), self.zero_point, dtype=torch.int32, device=x.device)
        scale = self.scale.to(x.device, x.dtype)
        return torch.fake_quantize_per_channel_affine(x, scale, zero, self.axis, self.q_min, self.q_max)

    __call__ = fake_quantize

    def values(self, x: torch.Tensor) -> torch.Tensor:
        """The quantized values of ``x`` by plain elementwise arithmetic: no gradient, several times faster on CPU
        than the fused kernel (which also builds the STE mask); used to score candidate ranges."""
        scale = broadcast_scale(self.scale, self.axis, x)
        levels = torch.clamp(torch.round(x * (1.0 / scale)) + self.zero_point, self.q_min, self.q_max)
        return (levels - self.zero_point) * scale

    def integers(self, x: torch.Tensor) -> torch.Tensor:
        """The integer levels (zero point included) that :meth:`fake_quantize` puts on ``x``: what export stores."""
        fake = self.fake_quantize(x.float())
        scale = broadcast_scale(self.scale, self.axis, fake)
        scale = scale.float() if isinstance(scale, torch.Tensor) else scale
        return (torch.round(fake / scale) + self.zero_point).to(torch.int64)

    def grid_ste(self, units: torch.Tensor) -> torch.Tensor:
        """``units`` (``x / scale``) on the level grid, less the zero point, with the straight-through gradient:
        1 inside ``[q_min - z, q_max - z]``, 0 where clipped (LSQ's training forward pass)."""
        rounded = (units.round() - units).detach() + units
        return torch.clamp(rounded + self.zero_point, self.q_min, self.q_max) - self.zero_point

    @property
    def top_level(self) -> float:
        """The largest level (LSQ's ``Q_P``, in its step-size gradient scale)."""
        return float(self.q_max)

    def with_scale(self, scale: float | torch.Tensor) -> QuantParams:
        return dataclasses.replace(self, scale=scale)

    def _key(self) -> tuple:
        scale = self.scale if self.axis is None else tuple(self.scale.reshape(-1).tolist())
        return (scale, self.zero_point, self.q_min, self.q_max, self.axis)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, QuantParams) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())


def broadcast_scale(scale: float | torch.Tensor, axis: int | None, x: torch.Tensor) -> float | torch.Tensor:
    """``scale`` shaped to broadcast against ``x`` along ``axis`` (a float per tensor is returned as it is)."""
    if axis is None:
        return scale
    shape = [1] * x.dim()
    shape[axis] = -1
    return scale.to(x.device).reshape(shape)


def symmetric_levels(bits: int) -> int:
    """The largest integer level of a narrow-range symmetric quantizer (``2^(b-1) - 1``)."""
    return 2 ** (bits - 1) - 1


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


def weight_quantizer(
    weight: torch.Tensor, bits: int, method: RangeMethod = "mse", percentile: float = 99.99
) -> QuantParams:
    """The symmetric per-output-channel quantizer of ``weight`` at integer ``bits`` (:func:`weight_scale`)."""
    return QuantParams.symmetric(weight_scale(weight, bits, method, percentile), bits)


def quantize_weight(
    weight: torch.Tensor, bits: int, method: RangeMethod = "mse", percentile: float = 99.99
) -> torch.Tensor:
    """The fake-quantized copy of ``weight`` at ``bits`` (returned unchanged for floating-point bits)."""
    if is_float_bits(bits):
        return weight
    with torch.no_grad():
        return weight_quantizer(weight, bits, method, percentile).fake_quantize(weight)


def _affine(lo: float, hi: float, bits: int, unsigned: bool) -> QuantParams:
    q_max = 2**bits - 1
    if unsigned:
        return QuantParams(max(hi, 1e-12) / q_max, 0, 0, q_max)
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max(hi - lo, 1e-12) / q_max
    zero_point = int(min(max(round(-lo / scale), 0), q_max))
    return QuantParams(scale, zero_point, 0, q_max)


def activation_quantizer(
    sample: torch.Tensor,
    lo: float,
    hi: float,
    bits: int,
    method: RangeMethod = "mse",
    percentile: float = 99.99,
) -> QuantParams:
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
