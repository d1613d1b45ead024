"""Weight-only group-wise integer formats, the GGUF block types among them, priced by their true bits per weight.

A group-wise format cuts each row of a weight (its input dimension) into groups of ``group`` consecutive weights
and stores, per group, ``bits``-bit integers and a float16 scale (and a float16 minimum when asymmetric). The
rules are ggml's (``ggml/src/ggml-quants.c``, ``quantize_row_q4_0_ref`` and its siblings; numpy copies in the
``gguf`` package's ``gguf/quants.py``), generalised to any bit-width and group size:

* symmetric (``q4_0``, ``q5_0``): ``d = m / -2^(b-1)`` with ``m`` the group's value of largest magnitude (its sign
  kept), ``q = clamp(trunc(x / d + 2^(b-1) + 0.5), 0, 2^b - 1)``, value ``(q - 2^(b-1)) * fp16(d)``; the extreme
  value is exact and ``2^b`` levels are used;
* asymmetric (``q4_1``, ``q5_1``): ``d = (max - min) / (2^b - 1)``, ``q = clamp(trunc((x - min) / d + 0.5), 0,
  2^b - 1)``, value ``q * fp16(d) + fp16(min)``;
* ``q8_0``: ``d = max|x| / 127``, ``q = round(x / d)`` (halves away from zero), value ``q * fp16(d)``.

(``x / d`` is ``x * (1 / d)`` in float32, as ggml computes it.) Bits per weight count the stored scale and minimum:
``bits + 16 / group`` symmetric and ``bits + 32 / group`` asymmetric, so Q4_0 is 4.5, Q4_1 5.0, Q5_0 5.5, Q5_1
6.0 and Q8_0 8.5, the sizes ggml gives them (``ggml_type_size / ggml_blck_size``). A layer whose input width is not
a multiple of the group size cannot take that format.

Formats are named ``q4_0``, ``q4_1``, ``q5_0``, ``q5_1``, ``q8_0`` (the GGUF types, group 32) and ``int{b}_g{G}``
or ``int{b}_g{G}_asym`` (``b`` 2..8, ``G`` 32, 64 or 128). Each has a precision code, ``BLOCK_CODE_BASE`` plus its
place in :data:`BLOCK_FORMATS`, which policies, cost tables and the simulator carry like any other code. The
k-quants (Q2_K..Q6_K) are not here: their quantizers search scales per 16-weight sub-block (``make_qx_quants``), the
``gguf`` package has no reference for them, and their 256-weight super-blocks do not divide SmolLM2's width (576).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mpq_rl.errors import UserError

BLOCK_CODE_BASE = 1000
"""Precision codes from here on are group-wise formats (the ``k``-th of :data:`BLOCK_FORMATS` is ``1000 + k``)."""
SCALE_BITS = 16
"""Scales and minimums are stored as float16 (ggml's ``ggml_half``)."""
GROUP_SIZES = (32, 64, 128)
INTEGER_BITS = tuple(range(2, 9))


@dataclass(frozen=True)
class GroupFormat:
    """``bits``-bit integers in groups of ``group`` weights along each row, with a float16 scale per group (and a
    float16 minimum when not ``symmetric``); ``narrow`` is Q8_0's rule (scale ``max|x| / (2^(b-1) - 1)``)."""

    name: str
    bits: int
    group: int
    symmetric: bool
    narrow: bool = False

    @property
    def bits_per_weight(self) -> float:
        """Stored bits per weight: the integers plus the group's scale (and minimum)."""
        return self.bits + SCALE_BITS * (1 if self.symmetric else 2) / self.group

    def check(self, weight: torch.Tensor, layer: str) -> None:
        """A :class:`UserError` unless every row of ``weight`` splits into whole groups."""
        width = weight[0].numel()
        if width % self.group:
            raise UserError(
                f"layer {layer!r} has {width} inputs per output, not a multiple of {self.name}'s group of "
                f"{self.group}: leave {self.name} out of quantization.weight_formats or exclude the layer"
            )

    def quantize(self, weight: torch.Tensor) -> torch.Tensor:
        """The dequantized values of ``weight`` in this format (float32, ``weight``'s shape), as ggml computes them."""
        groups = weight.detach().float().reshape(-1, self.group)
        if self.symmetric:
            if self.narrow:
                top = 2 ** (self.bits - 1) - 1
                d = groups.abs().amax(dim=1, keepdim=True) / top
                q = _round_away(groups * _inverse(d)).clamp(-top, top)
                values = q * _half(d)
            else:
                half = 2 ** (self.bits - 1)
                extreme = groups.gather(1, groups.abs().argmax(dim=1, keepdim=True))
                d = extreme / -half
                q = torch.trunc(groups * _inverse(d) + (half + 0.5)).clamp(0, 2 * half - 1)
                values = (q - half) * _half(d)
        else:
            low, high = groups.amin(dim=1, keepdim=True), groups.amax(dim=1, keepdim=True)
            d = (high - low) / (2**self.bits - 1)
            q = torch.trunc((groups - low) * _inverse(d) + 0.5).clamp(0, 2**self.bits - 1)
            values = q * _half(d) + _half(low)
        return values.reshape(weight.shape)


def _inverse(d: torch.Tensor) -> torch.Tensor:
    """``1 / d`` in float32, 0 where ``d`` is 0 (an all-zero group)."""
    return torch.where(d == 0, torch.zeros_like(d), 1.0 / d)


def _half(x: torch.Tensor) -> torch.Tensor:
    """``x`` rounded to float16 and back, as stored."""
    return x.half().float()


def _round_away(x: torch.Tensor) -> torch.Tensor:
    """Round to nearest, halves away from zero (C's ``roundf``)."""
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def _catalogue() -> tuple[GroupFormat, ...]:
    gguf = (
        GroupFormat("q4_0", 4, 32, True),
        GroupFormat("q4_1", 4, 32, False),
        GroupFormat("q5_0", 5, 32, True),
        GroupFormat("q5_1", 5, 32, False),
        GroupFormat("q8_0", 8, 32, True, narrow=True),
    )
    integers = tuple(
        GroupFormat(f"int{bits}_g{group}{'' if symmetric else '_asym'}", bits, group, symmetric)
        for symmetric in (True, False)
        for group in GROUP_SIZES
        for bits in INTEGER_BITS
    )
    return gguf + integers


BLOCK_FORMATS: tuple[GroupFormat, ...] = _catalogue()
"""Every group-wise format, in code order (append only: a format's place is its code)."""
GGUF_TYPES = ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0")
FORMAT_NAMES = tuple(f.name for f in BLOCK_FORMATS)
_BY_NAME = {name: i for i, name in enumerate(FORMAT_NAMES)}


def is_block_code(code: int) -> bool:
    return BLOCK_CODE_BASE <= int(code) < BLOCK_CODE_BASE + len(BLOCK_FORMATS)


def block_format(code: int) -> GroupFormat:
    """The format of a block precision code."""
    if not is_block_code(code):
        raise UserError(f"precision code {code} is not a group-wise format")
    return BLOCK_FORMATS[int(code) - BLOCK_CODE_BASE]


def block_code(name: str) -> int:
    """The precision code of the format called ``name`` (e.g. ``q4_0``, ``int3_g64_asym``)."""
    if name not in _BY_NAME:
        raise UserError(f"unknown weight format {name!r}: choose among {', '.join(GGUF_TYPES)} or int<b>_g<G>[_asym]")
    return BLOCK_CODE_BASE + _BY_NAME[name]


def codes_by_size(names: list[str]) -> list[int]:
    """The codes of ``names``, from the fewest bits per weight to the most (searchers climb the list in order)."""
    formats = {block_code(name): BLOCK_FORMATS[_BY_NAME[name]] for name in names}
    return sorted(formats, key=lambda c: (formats[c].bits_per_weight, formats[c].bits, c))


@dataclass(frozen=True, eq=False)
class GroupQuantizer:
    """A layer's weight quantizer in a group-wise format: ``fake_quantize`` and ``values`` give the dequantized
    weight (the former with the straight-through gradient), as the simulator's other quantizers do."""

    format: GroupFormat
    code: int

    def values(self, x: torch.Tensor) -> torch.Tensor:
        return self.format.quantize(x)

    def fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        quantized = self.values(x).to(x.dtype)
        if not (x.requires_grad and torch.is_grad_enabled()):
            return quantized
        return x + (quantized - x).detach()

    __call__ = fake_quantize


def weight_quantizer(weight: torch.Tensor, code: int, layer: str) -> GroupQuantizer:
    """The quantizer of ``weight`` (layer ``layer``) in the group-wise format ``code``, checked to fit."""
    fmt = block_format(code)
    fmt.check(weight, layer)
    return GroupQuantizer(fmt, int(code))
