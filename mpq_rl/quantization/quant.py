"""Uniform affine quantization: the one quantizer type (:class:`QuantParams`), range selection, and the STE.

Conventions follow the quantization survey of Gholami et al. (2021): ``x_q = (clamp(round(x / s) + z, q_min,
q_max) - z) * s``. Weights are symmetric per output channel (narrow range, ``[-(2^(b-1) - 1), 2^(b-1) - 1]``);
activations are per tensor, unsigned ``[0, 2^b - 1]`` when the calibration data are non-negative, asymmetric
otherwise. Bit-widths 16 and 32 mean "leave in floating point". Rounding is passed straight through in the
backward pass (STE, zero gradient where the value was clipped), using PyTorch's fused fake-quantize kernels.

A quantizer's parameters (scale, zero point, integer range, axis) are one :class:`QuantParams`, with
``fake_quantize`` (STE, for QAT and the fallback path), ``values`` (no gradient, for range search),
``integers`` (for export) and ``grid_ste`` (LSQ); the simulator, LSQ (:mod:`mpq_rl.quantization.qat`) and export use it.
The value-table formats' :class:`~mpq_rl.quantization.formats.TableQuantizer` has the same operations
(:class:`Quantizer`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import torch

from mpq_rl.quantization.bits import FLOAT_BITS
from mpq_rl.quantization.kernels import channel_errors, tensor_errors

RangeMethod = Literal["mse", "minmax", "percentile"]
_COARSE_GRID = 40
_FINE_GRID = 20


def is_float_bits(bits: int) -> bool:
    """True for the bit-widths that mean "not quantized"."""
    return bits in FLOAT_BITS


class Quantizer(Protocol):
    """What every quantizer offers, integer (:class:`QuantParams`) or value table
    (:class:`mpq_rl.quantization.formats.TableQuantizer`): the simulator, LSQ and export use only this."""

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


_ELEMENTS_PER_CHUNK = 1 << 22
"""The most elements a range search's temporaries hold at once (16 MiB in float32): candidates are scored in
slices of this size, which keeps a large layer's search in bounded memory and a small one's in the CPU caches."""


def _identity(ratio: torch.Tensor) -> torch.Tensor:
    return ratio


def scored_in_slices(
    errors_of: Callable[[torch.Tensor], torch.Tensor], ratios: torch.Tensor, elements_per_ratio: int
) -> torch.Tensor:
    """``errors_of(ratios)`` for a stack of candidates ``[K, ...]``, computed on slices along ``K`` so that no
    temporary exceeds :data:`_ELEMENTS_PER_CHUNK` when each candidate touches ``elements_per_ratio`` values.
    Each candidate's error is a reduction of its own, so slicing does not change a bit of it."""
    per_slice = max(1, _ELEMENTS_PER_CHUNK // max(elements_per_ratio, 1))
    return torch.cat([errors_of(part) for part in ratios.split(per_slice)])


def mse_ratio_search(
    errors_of: Callable[[torch.Tensor], torch.Tensor],
    shape: Sequence[int],
    lo: float = 0.02,
    hi: float = 1.0,
    ratio_of: Callable[[torch.Tensor], torch.Tensor] = _identity,
    device: torch.device | None = None,
) -> torch.Tensor:
    """The best clipping ratio in [lo, hi] of each of a batch of independent searches (shape ``shape``, e.g.
    bit-widths x channels): a coarse grid, then a fine grid around each one's best.

    ``errors_of`` maps candidates ``[K, *shape]`` (grid points passed through ``ratio_of``) to squared errors of the
    same shape: the whole coarse grid is scored in one call, then each fine step (which starts from the best so far)
    in one call for the whole batch. The candidates, their order and the first-best tie rule are those of searching
    one bit-width and one grid point at a time, so the result is bit for bit the same, without a small tensor
    operation per candidate. ``ratio_of`` is applied to tensors shaped as in that one-at-a-time search (a
    transcendental ``ratio_of`` such as ``exp`` can round differently by the length of what it is given).
    """
    coarse = torch.linspace(lo, hi, _COARSE_GRID)
    points = torch.cat([ratio_of(torch.full_like(coarse[:1], r)) for r in coarse.tolist()]).to(device)
    errors = errors_of(points.reshape(-1, *[1] * len(shape)).expand(-1, *shape))
    best = coarse.to(device)[errors.argmin(dim=0)]
    best_error = errors.min(dim=0).values
    step = (hi - lo) / (_COARSE_GRID - 1)
    for offset in torch.linspace(-step, step, _FINE_GRID).tolist():
        # each fine step starts from the best so far, so the steps run in turn (each over the whole batch)
        ratio = (best + offset).clamp(lo, hi)
        error = errors_of(ratio_of(ratio).unsqueeze(0))[0]
        better = error < best_error
        best = torch.where(better, ratio, best)
        best_error = torch.where(better, error, best_error)
    return best


def weight_scales(
    weight: torch.Tensor, bits: Sequence[int], method: RangeMethod = "mse", percentile: float = 99.99
) -> torch.Tensor:
    """Per-output-channel scales ``[len(bits), C]`` of symmetric quantizers for ``weight`` at each of ``bits``,
    chosen by ``method``: every bit-width and channel in one search."""
    rows = weight.detach().reshape(weight.shape[0], -1).float()
    tiny = torch.finfo(torch.float32).tiny
    q_max = torch.tensor([symmetric_levels(b) for b in bits], dtype=torch.float32, device=rows.device)[:, None]
    abs_max = rows.abs().amax(dim=1)
    if method == "minmax":
        clip = abs_max.expand(len(bits), -1)
    elif method == "percentile":
        clip = torch.quantile(rows.abs(), percentile / 100.0, dim=1).expand(len(bits), -1)
    else:

        def errors_of(ratios: torch.Tensor) -> torch.Tensor:  # [K, bits, C]
            scale = (abs_max * ratios / q_max).clamp_min(tiny)
            if rows.is_cpu:
                limits = q_max.reshape(1, -1).expand(len(scale), -1).reshape(-1).contiguous()
                squares = torch.empty(limits.numel(), *rows.shape)
                channel_errors()(rows.numpy(), scale.reshape(-1, len(rows)).numpy(), limits.numpy(), squares.numpy())
                return squares.sum(dim=-1).reshape(scale.shape)
            scale, limit = scale.unsqueeze(-1), q_max.unsqueeze(-1)
            quantized = torch.round(rows / scale).clamp_(-limit, limit).mul_(scale)
            return quantized.sub_(rows).pow_(2).sum(dim=-1)

        shape = (len(bits), rows.shape[0])
        search = mse_ratio_search(
            lambda r: scored_in_slices(errors_of, r, rows.numel() * len(bits)), shape, device=rows.device
        )
        clip = abs_max * search
    return (clip / q_max).clamp_min(tiny)


def _affine(lo: float, hi: float, bits: int, unsigned: bool) -> QuantParams:
    q_max = 2**bits - 1
    if unsigned:
        return QuantParams(max(hi, 1e-12) / q_max, 0, 0, q_max)
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max(hi - lo, 1e-12) / q_max
    zero_point = int(min(max(round(-lo / scale), 0), q_max))
    return QuantParams(scale, zero_point, 0, q_max)


@dataclass(frozen=True)
class ActivationSample:
    """An activation as calibration observed it: its range ``[lo, hi]`` and a 1-D ``sample`` of its values."""

    sample: torch.Tensor
    lo: float
    hi: float


def activation_quantizers(
    observed: ActivationSample, bits: Sequence[int], method: RangeMethod = "mse", percentile: float = 99.99
) -> list[QuantParams]:
    """Per-tensor quantizers at each of ``bits`` for an ``observed`` activation, every bit-width's range searched
    at once.

    Unsigned when ``lo >= 0``. ``mse`` shrinks the observed range by the ratio that minimizes the squared error on
    the sample; ``percentile`` clips at the given percentile of the sample (both tails when signed).
    """
    sample, lo, hi = observed.sample, observed.lo, observed.hi
    unsigned = lo >= 0.0
    if method == "minmax":
        return [_affine(lo, hi, b, unsigned) for b in bits]
    if method == "percentile":
        p = percentile / 100.0
        top = float(torch.quantile(sample, p))
        bottom = 0.0 if unsigned else float(torch.quantile(sample, 1.0 - p))
        return [_affine(bottom, top, b, unsigned) for b in bits]

    q_max = torch.tensor([2**b - 1 for b in bits], dtype=torch.float64, device=sample.device)

    def errors_of(ratios: torch.Tensor) -> torch.Tensor:  # [K, bits]
        # _affine's arithmetic in float64 for every candidate at once, then QuantParams.values' in float32
        ratio = ratios.double()
        low, high = lo * ratio, hi * ratio
        if unsigned:
            scale, zero = high.clamp_min(1e-12) / q_max, torch.zeros_like(high)
        else:
            low, high = low.clamp_max(0.0), high.clamp_min(0.0)
            scale = (high - low).clamp_min(1e-12) / q_max
            zero = torch.round(-low / scale).clamp_min(0.0).minimum(q_max)
        inverse, scale, zero = (1.0 / scale).float(), scale.float(), zero.float()
        if sample.is_cpu:
            # clamping round(x / s) + z to [0, q_max] and subtracting z is clamping round(x / s) to [-z, q_max - z]
            low, high = (-zero).reshape(-1), (q_max.float() - zero).reshape(-1)
            squares = torch.empty(low.numel(), len(sample))
            tensor_errors()(
                sample.numpy(),
                inverse.reshape(-1).numpy(),
                scale.reshape(-1).numpy(),
                low.numpy(),
                high.numpy(),
                squares.numpy(),
            )
            return squares.sum(dim=-1).reshape(ratios.shape)
        inverse, scale, zero = inverse[..., None], scale[..., None], zero[..., None]
        levels = torch.round(sample * inverse).add_(zero).clamp_(torch.zeros_like(zero), q_max.float()[:, None])
        return levels.sub_(zero).mul_(scale).sub_(sample).pow_(2).sum(dim=-1)

    search = mse_ratio_search(
        lambda r: scored_in_slices(errors_of, r, sample.numel() * len(bits)), (len(bits),), device=sample.device
    )
    return [_affine(lo * ratio, hi * ratio, b, unsigned) for b, ratio in zip(bits, search.tolist(), strict=True)]


def quantization_error(x: torch.Tensor, x_q: torch.Tensor) -> float:
    """Relative squared error ``||x_q - x||^2 / ||x||^2``."""
    denom = float(x.pow(2).sum())
    return float((x_q - x).pow(2).sum()) / denom if denom > 0 else 0.0
