"""Number formats per layer: integers, minifloats (``fp``) and ANT's ``flint``, as tables of representable values.

A layer's weights and activations each get a format and a bit-width. Both travel through policies, budgets and
cost tables as one integer, the *precision code*: ``FORMAT_CODE_STRIDE * k + bits`` for the ``k``-th entry of
:data:`FORMAT_NAMES`, so an integer bit-width is its own code (every integer-only policy, table and cache is
unchanged) and ``104`` is fp4, ``204`` flint4. Policy files spell the format out (``w_format``, ``a_format``).

Integers keep their affine path (:class:`mpq_rl.quantization.quant.QuantParams`); the other formats quantize to their
value
table, scaled per output channel (weights) or per tensor (activations) by the same clipping-ratio search as
integers, rounding to the nearest value (ties to the smaller) with a straight-through estimator for QAT. Their
quantizer, :class:`TableQuantizer`, has QuantParams' shape (a scale, float or per-channel tensor, and an axis)
and operations (``fake_quantize``, ``values``, ``integers``, ``grid_ste``), with a sorted value table in place
of the integer range and zero point, so the simulator, LSQ and export take either without asking which. Weights
are signed; an activation is unsigned when its calibration input is non-negative, and then the sign bit becomes
one more mantissa bit. ``fp`` and ``flint`` start at 3 bits (1 sign bit and at least 2 for the magnitude); the
2-bit candidate stays integer-only.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Protocol

import torch

from mpq_rl.errors import UserError
from mpq_rl.quantization import groupwise
from mpq_rl.quantization.quant import (
    ActivationSample,
    Quantizer,
    QuantParams,
    RangeMethod,
    activation_quantizers,
    broadcast_scale,
    mse_ratio_search,
    scored_in_slices,
    weight_scales,
)

FORMAT_NAMES = ("int", "fp", "flint")
FORMAT_CODE_STRIDE = 100


class Format(Protocol):
    """A number format: its values, and its quantizers for a layer's weight or input at several bit-widths at once
    (batched: a format that can search several bit-widths' ranges together does)."""

    name: str
    min_bits: int

    def magnitudes(self, magnitude_bits: int) -> list[float]:
        """The non-negative values of ``magnitude_bits`` bits (before scaling)."""
        ...

    def weight_quantizers(
        self, weight: torch.Tensor, bits: Sequence[int], method: RangeMethod = "mse", percentile: float = 99.99
    ) -> list[Quantizer]:
        """Per-output-channel quantizers of ``weight``, one per entry of ``bits``, ranges chosen by ``method``."""
        ...

    def activation_quantizers(
        self, observed: ActivationSample, bits: Sequence[int], method: RangeMethod = "mse", percentile: float = 99.99
    ) -> list[Quantizer]:
        """Per-tensor quantizers, one per entry of ``bits``, for an ``observed`` input: unsigned when its
        ``lo >= 0``."""
        ...

    def weight_quantizer_with_scale(self, scale: torch.Tensor, bits: int) -> Quantizer:
        """The per-output-channel weight quantizer at ``bits`` with the given ``scale`` (e.g. trained by LSQ)."""
        ...


class IntegerFormat:
    """Two's-complement integers: narrow-range ``[-(2^(b-1) - 1), 2^(b-1) - 1]`` signed, ``[0, 2^b - 1]``
    unsigned, through :class:`mpq_rl.quantization.quant.QuantParams` (every bit-width's range in one search)."""

    name = "int"
    min_bits = 2

    def magnitudes(self, magnitude_bits: int) -> list[float]:
        return [float(v) for v in range(2**magnitude_bits)]

    def weight_quantizers(
        self, weight: torch.Tensor, bits: Sequence[int], method: RangeMethod = "mse", percentile: float = 99.99
    ) -> list[Quantizer]:
        scales = weight_scales(weight, bits, method, percentile)
        return [QuantParams.symmetric(scale, b) for b, scale in zip(bits, scales, strict=True)]

    def activation_quantizers(
        self, observed: ActivationSample, bits: Sequence[int], method: RangeMethod = "mse", percentile: float = 99.99
    ) -> list[Quantizer]:
        return list(activation_quantizers(observed, bits, method, percentile))

    def weight_quantizer_with_scale(self, scale: torch.Tensor, bits: int) -> Quantizer:
        return QuantParams.symmetric(scale, bits)


class TableFormat:
    """A format quantized onto its value table (:class:`TableQuantizer`), one bit-width's range search at a time."""

    name: str
    min_bits = 3

    def weight_quantizers(
        self, weight: torch.Tensor, bits: Sequence[int], method: RangeMethod = "mse", percentile: float = 99.99
    ) -> list[Quantizer]:
        return [_weight_quantizer(weight, precision_code(self.name, b), method, percentile) for b in bits]

    def activation_quantizers(
        self, observed: ActivationSample, bits: Sequence[int], method: RangeMethod = "mse", percentile: float = 99.99
    ) -> list[Quantizer]:
        codes = [precision_code(self.name, b) for b in bits]
        return [_activation_quantizer(observed, code, method, percentile) for code in codes]

    def weight_quantizer_with_scale(self, scale: torch.Tensor, bits: int) -> Quantizer:
        code = precision_code(self.name, bits)
        return TableQuantizer(scale, value_table(code, True), code, 0)


class MiniFloat(TableFormat):
    """Minifloats ``ExMy``: exponent field ``f``, mantissa ``j``, bias ``2^(x-1) - 1``; normal values
    ``2^(f - bias) * (1 + j / 2^y)``, subnormals ``2^(1 - bias) * j / 2^y`` at ``f = 0``. Every exponent code
    is a finite value (no infinities or NaN: a quantized tensor holds neither), so E4M3 reaches 480 where the
    OCP FP8 E4M3 reserves its top code for NaN and stops at 448.

    Splits by magnitude bits (bits without the sign): 2 -> E2M0, 3 -> E2M1 (OCP FP4), 4 -> E2M2, 5 -> E2M3 (OCP
    MX FP6 E2M3), 6 -> E3M3, 7 -> E4M3 (OCP FP8 E4M3), 8 -> E4M4 (unsigned 8-bit activations). Two exponent bits
    up to 6 bits because the per-channel scale already supplies the range and the mantissa sets the precision; 7
    and 8 bits spend their extra bits on the exponent (E3M3, then FP8 E4M3), which only helps small values.
    """

    name = "fp"
    EXPONENT_BITS = {2: 2, 3: 2, 4: 2, 5: 2, 6: 3, 7: 4, 8: 4}

    def split(self, magnitude_bits: int) -> tuple[int, int]:
        """(exponent bits, mantissa bits) for ``magnitude_bits``."""
        exponent = self.EXPONENT_BITS[magnitude_bits]
        return exponent, magnitude_bits - exponent

    def magnitudes(self, magnitude_bits: int) -> list[float]:
        exponent, mantissa = self.split(magnitude_bits)
        bias = 2 ** (exponent - 1) - 1
        values = [2.0 ** (1 - bias) * j / 2**mantissa for j in range(2**mantissa)]
        for field in range(1, 2**exponent):
            values += [2.0 ** (field - bias) * (1 + j / 2**mantissa) for j in range(2**mantissa)]
        return values


class Flint(TableFormat):
    """ANT's flint (Guo et al., MICRO 2022; clevercool/ANT-Quantization ``antquant/quant_modules.py``): an
    ``M``-bit magnitude whose exponent is coded by a run of leading zeros (below 1) or ones (1 and above), so the
    mantissa loses one bit per exponent step away from 1: exponent ``e`` in ``[-(M-1), M-2]`` carries
    ``M - 2 - max(e, -e - 1)`` mantissa bits, plus zero and the top value ``2^(M-1)``; ``2^M`` codes in all.
    Denser than integers near zero, with floating-point range, at no cost in codes."""

    name = "flint"

    def magnitudes(self, magnitude_bits: int) -> list[float]:
        m = magnitude_bits
        values = [0.0]
        for e in range(-(m - 1), m - 1):
            mantissa = m - 2 - max(e, -e - 1)
            values += [2.0**e * (1 + j / 2**mantissa) for j in range(2**mantissa)]
        return [*values, 2.0 ** (m - 1)]


FORMATS: dict[str, Format] = {f.name: f for f in (IntegerFormat(), MiniFloat(), Flint())}


def format_for(code: int) -> Format:
    """The format of a precision code."""
    return FORMATS[format_of(code)]


def by_format(codes: Iterable[int]) -> list[tuple[Format, list[int]]]:
    """``codes`` grouped by format (formats in :data:`FORMAT_NAMES` order, codes in the order given), so each
    format's quantizers are built in one batched call."""
    groups: dict[str, list[int]] = {name: [] for name in FORMAT_NAMES}
    for code in codes:
        groups[format_of(code)].append(code)
    return [(FORMATS[name], group) for name, group in groups.items() if group]


@dataclass(frozen=True)
class Precision:
    """A number format at a bit-width, e.g. ``Precision("fp", 4)``. Policies, budgets, cost tables and caches carry
    it serialized as its integer code (:func:`precision_code`: ``4``, ``104``); :meth:`of` reads a code back."""

    format: str
    bits: int

    @classmethod
    def of(cls, code: int) -> Precision:
        return cls(format_of(code), bits_of(code))

    @property
    def code(self) -> int:
        return precision_code(self.format, self.bits)

    def __str__(self) -> str:
        return label(self.code)


def precision_code(format_name: str, bits: int) -> int:
    """The code of ``format_name`` at ``bits`` (``bits`` itself for integers and floating point; a group-wise
    format of :mod:`mpq_rl.quantization.groupwise` has one bit-width and its own code)."""
    if format_name in groupwise.FORMAT_NAMES:
        return groupwise.block_code(format_name)
    return FORMAT_NAMES.index(format_name) * FORMAT_CODE_STRIDE + bits


def format_of(code: int) -> str:
    if groupwise.is_block_code(code):
        return groupwise.block_format(code).name
    return FORMAT_NAMES[int(code) // FORMAT_CODE_STRIDE]


def bits_of(code: int) -> int:
    if groupwise.is_block_code(code):
        return groupwise.block_format(code).bits
    return int(code) % FORMAT_CODE_STRIDE


def is_integer_code(code: int) -> bool:
    """True for integer (and floating-point 16/32) codes: the ones :mod:`mpq_rl.quantization.quant` handles."""
    return int(code) < FORMAT_CODE_STRIDE


def label(code: int) -> str:
    """How a code reads: ``4`` for an integer, ``fp4``, ``flint6``."""
    if groupwise.is_block_code(code):
        return format_of(code)
    return str(code) if is_integer_code(code) else f"{format_of(code)}{bits_of(code)}"


def candidate_codes(formats: list[str], bits: list[int]) -> list[int]:
    """The codes of every format at every bit-width it supports (fp and flint from 3 bits), sorted; 16/32
    (floating point) appear once, as integer codes."""
    codes = {b for b in bits if "int" in formats or b >= 16}
    for name in formats:
        if name != "int":
            codes |= {precision_code(name, b) for b in bits if FORMATS[name].min_bits <= b <= 8}
    return sorted(codes)


def check_code(code: int, what: str) -> None:
    """A :class:`UserError` unless ``code`` names a format at a bit-width it has."""
    if groupwise.is_block_code(code):
        return
    index, bits = divmod(int(code), FORMAT_CODE_STRIDE)
    if index >= len(FORMAT_NAMES):
        raise UserError(f"{what}: precision code {code} names no format (known: {', '.join(FORMAT_NAMES)})")
    if index > 0 and not FORMATS[FORMAT_NAMES[index]].min_bits <= bits <= 8:
        raise UserError(f"{what}: {FORMAT_NAMES[index]} has no {bits}-bit form; fp and flint take 3 to 8 bits")


@cache
def value_table(code: int, signed: bool) -> torch.Tensor:
    """The sorted representable values (float32) of a non-integer ``code``; signed tables are symmetric."""
    bits = bits_of(code)
    magnitudes = FORMATS[format_of(code)].magnitudes(bits - 1 if signed else bits)
    values = sorted({*magnitudes, *(-v for v in magnitudes if signed)})
    return torch.tensor(values, dtype=torch.float32)


def codes_of(x: torch.Tensor, scale: torch.Tensor | float, table: torch.Tensor) -> torch.Tensor:
    """Indices into the sorted ``table`` of the values nearest to ``x / scale`` (ties to the smaller): the number
    of midpoints between neighbouring values that lie below. What an exporter stores."""
    return torch.bucketize(x / scale, (table[1:] + table[:-1]) * 0.5)


def _nearest(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Each element of ``x`` replaced by the nearest value of the sorted ``table``."""
    return table[codes_of(x, 1.0, table)]


def fake_quantize(x: torch.Tensor, scale: torch.Tensor | float, table: torch.Tensor) -> torch.Tensor:
    """``x`` rounded to the nearest of ``table * scale``; the gradient passes straight through where ``x`` is
    inside the table's range and is zero where it was clipped (the integer STE's rule)."""
    scaled = x / scale
    quantized = _nearest(scaled, table) * scale
    if not (x.requires_grad and torch.is_grad_enabled()):
        return quantized
    inside = (scaled >= table[0]) & (scaled <= table[-1])
    return torch.where(inside, quantized + (x - x.detach()), quantized.detach())


def _clip_ratio(
    errors_of: Callable[[torch.Tensor], torch.Tensor], shape: Sequence[int], top: float, elements: int, device
) -> torch.Tensor:
    """The integers' coarse-then-fine search (:func:`mpq_rl.quantization.quant.mse_ratio_search`, every candidate of a
    stage
    scored at once over ``elements`` values each) for the ratio of clipping value to the observed maximum, on a log
    scale from 0.02 up to ``top`` (the table's largest value): above 1 the observed maximum lands below the table's
    top, which pays off for flint, whose sparse top octaves hold two values whatever the bits."""
    log_ratio = mse_ratio_search(
        lambda r: scored_in_slices(errors_of, r, elements),
        shape,
        math.log(0.02),
        math.log(max(top, 1.0)),
        ratio_of=torch.exp,
        device=device,
    )
    return torch.exp(log_ratio)


def _weight_scale(weight: torch.Tensor, code: int, method: str = "mse", percentile: float = 99.99) -> torch.Tensor:
    """Per-output-channel scales (shape ``[C, 1, ...]``) mapping ``code``'s largest value onto each channel's
    clipping value, chosen by ``method`` as for integers (:func:`mpq_rl.quantization.quant.weight_scales`)."""
    rows = weight.detach().reshape(weight.shape[0], -1).float()
    table = value_table(code, signed=True).to(rows.device)
    top = float(table[-1])
    abs_max = rows.abs().amax(dim=1)

    def scale_of(clip: torch.Tensor) -> torch.Tensor:
        return (clip / top).clamp_min(torch.finfo(torch.float32).tiny).unsqueeze(-1)

    if method == "minmax":
        clip = abs_max
    elif method == "percentile":
        clip = torch.quantile(rows.abs(), percentile / 100.0, dim=1)
    else:

        def errors_of(ratios: torch.Tensor) -> torch.Tensor:  # [K, C]
            scale = scale_of(abs_max * ratios)
            return (_nearest(rows / scale, table).mul_(scale).sub_(rows)).pow_(2).sum(dim=-1)

        clip = abs_max * _clip_ratio(errors_of, abs_max.shape, top, rows.numel(), rows.device)
    return scale_of(clip).reshape(-1, *([1] * (weight.dim() - 1)))


def _weight_quantizer(
    weight: torch.Tensor, code: int, method: str = "mse", percentile: float = 99.99
) -> TableQuantizer:
    """The per-output-channel quantizer of ``weight`` in ``code``'s format (:func:`_weight_scale`)."""
    return TableQuantizer(_weight_scale(weight, code, method, percentile).reshape(-1), value_table(code, True), code, 0)


@dataclass(frozen=True, eq=False)
class TableQuantizer:
    """A quantizer onto ``table * scale``, rounding to the nearest value (ties to the smaller): per tensor
    (``axis`` None, ``scale`` a float) or per slice along ``axis`` (``scale`` a 1-D tensor). The shape of
    :class:`mpq_rl.quantization.quant.QuantParams` (scale and axis, with the same operations) where a sorted value table
    takes
    the place of the integer range and zero point; ``integers`` are indices into the table (the codes export
    stores). ``code`` is the format's precision code."""

    scale: float | torch.Tensor
    table: torch.Tensor
    code: int
    axis: int | None = None

    def fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` rounded to the nearest scaled table value, with the straight-through gradient (0 where clipped)."""
        return fake_quantize(x, broadcast_scale(self.scale, self.axis, x), self.table)

    __call__ = fake_quantize

    def values(self, x: torch.Tensor) -> torch.Tensor:
        """The quantized values of ``x`` without a gradient."""
        scale = broadcast_scale(self.scale, self.axis, x)
        return _nearest(x / scale, self.table) * scale

    def integers(self, x: torch.Tensor) -> torch.Tensor:
        """The index into :attr:`table` of each element's quantized value."""
        return codes_of(x, broadcast_scale(self.scale, self.axis, x), self.table)

    def grid_ste(self, units: torch.Tensor) -> torch.Tensor:
        """``units`` (``x / scale``) on the table with the straight-through gradient: 1 inside the table's range,
        0 where clipped (LSQ's training forward pass)."""
        return fake_quantize(units, 1.0, self.table)

    @property
    def top_level(self) -> float:
        """The largest table value (LSQ's ``Q_P`` generalised, see :mod:`mpq_rl.quantization.qat`)."""
        return float(self.table[-1])

    @property
    def signed(self) -> bool:
        return bool(self.table[0] < 0)

    def with_scale(self, scale: float | torch.Tensor) -> TableQuantizer:
        return dataclasses.replace(self, scale=scale)


def _activation_quantizer(
    observed: ActivationSample, code: int, method: str = "mse", percentile: float = 99.99
) -> TableQuantizer:
    """A per-tensor quantizer for an ``observed`` input: unsigned when its ``lo >= 0``, else symmetric about zero;
    the clipping value is found as for integer activations."""
    sample, lo, hi = observed.sample, observed.lo, observed.hi
    signed = lo < 0.0
    table = value_table(code, signed).to(sample.device)
    top = float(table[-1])
    reach = max(abs(lo), abs(hi), 1e-12)
    if method == "minmax":
        clip = reach
    elif method == "percentile":
        clip = float(torch.quantile(sample.abs() if signed else sample, percentile / 100.0))
    else:

        def errors_of(ratios: torch.Tensor) -> torch.Tensor:  # [K, 1]
            scale = (reach * ratios.double() / top).float().unsqueeze(-1)
            return (_nearest(sample / scale, table).mul_(scale).sub_(sample)).pow_(2).sum(dim=-1)

        clip = reach * float(_clip_ratio(errors_of, (1,), top, sample.numel(), sample.device)[0])
    return TableQuantizer(max(clip, 1e-12) / top, table, code)


def table_record(code: int, signed: bool) -> dict[str, object]:
    """What an export sidecar says about a non-integer format: name, bits and the value table (times scale)."""
    table = value_table(code, signed)
    return {"format": format_of(code), "bits": bits_of(code), "signed": signed, "values": table.tolist()}
