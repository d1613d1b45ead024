"""Quantizers: error falls with bits, per-channel beats per-tensor, range methods, STE gradients."""

import pytest
import torch

from mpq_rl.quantization.formats import FORMATS
from mpq_rl.quantization.quant import (
    ActivationSample,
    QuantParams,
    activation_quantizers,
    quantization_error,
    symmetric_levels,
    weight_scales,
)

INT = FORMATS["int"]


def quantize_weight(weight: torch.Tensor, bits: int, method: str = "mse") -> torch.Tensor:
    """``weight`` fake-quantized at integer ``bits`` through the format's batched constructor."""
    return INT.weight_quantizers(weight, [bits], method)[0].fake_quantize(weight).detach()


def activation_quantizer(x: torch.Tensor, lo: float, hi: float, bits: int, method: str = "mse", **kwargs):
    return INT.activation_quantizers(ActivationSample(x, lo, hi), [bits], method, **kwargs)[0]


@pytest.fixture
def weight():
    torch.manual_seed(0)
    return torch.randn(32, 16, 3, 3)


@pytest.mark.parametrize("method", ["mse", "minmax", "percentile"])
def test_weight_error_falls_as_bits_rise(weight, method):
    errors = [quantization_error(weight, quantize_weight(weight, b, method)) for b in range(2, 9)]
    assert all(hi > lo for hi, lo in zip(errors, errors[1:], strict=False))
    assert errors[-1] < 1e-4


def test_quantized_weights_use_at_most_the_levels_of_their_bits(weight):
    for bits in (2, 3, 4):
        q = quantize_weight(weight, bits)
        scale = weight_scales(weight, [bits])[0].reshape(-1, 1, 1, 1)
        levels = torch.round(q / scale)
        assert torch.allclose(levels * scale, q, atol=1e-6)
        assert levels.abs().max() <= symmetric_levels(bits)
        assert all(torch.unique(levels[c]).numel() <= 2 * symmetric_levels(bits) + 1 for c in range(32))


def test_mse_range_beats_minmax_at_low_bits(weight):
    for bits in (2, 3, 4):
        mse = quantization_error(weight, quantize_weight(weight, bits, "mse"))
        minmax = quantization_error(weight, quantize_weight(weight, bits, "minmax"))
        assert mse < minmax


def test_per_channel_beats_per_tensor_on_unequal_channel_scales():
    torch.manual_seed(1)
    weight = torch.randn(8, 64) * torch.logspace(-2, 1, 8).unsqueeze(1)
    per_channel = quantize_weight(weight, 4, "minmax")
    amax = weight.abs().max()
    scale = amax / symmetric_levels(4)
    per_tensor = torch.clamp(torch.round(weight / scale), -7, 7) * scale
    assert quantization_error(weight, per_channel) < quantization_error(weight, per_tensor)
    # Per-tensor scales wipe out the small channels entirely; per-channel keeps every channel accurate.
    channel_errors = [
        (quantization_error(weight[c], per_channel[c]), quantization_error(weight[c], per_tensor[c])) for c in range(8)
    ]
    assert max(pc for pc, _ in channel_errors) < 0.05
    assert [pt for _, pt in channel_errors[:5]] == [1.0] * 5


def test_activation_quantizer_is_unsigned_for_non_negative_data_and_asymmetric_otherwise():
    torch.manual_seed(2)
    relu = torch.relu(torch.randn(10000))
    q = activation_quantizer(relu, 0.0, float(relu.max()), 4, "minmax")
    assert (q.q_min, q.q_max, q.zero_point) == (0, 15, 0)
    signed = torch.randn(10000) + 1.0
    q = activation_quantizer(signed, float(signed.min()), float(signed.max()), 4, "minmax")
    assert 0 < q.zero_point < 15
    assert (q(signed) - signed).abs().max() <= q.scale / 2 + 1e-6


def test_activation_error_falls_with_bits_and_mse_beats_minmax():
    torch.manual_seed(3)
    x = torch.relu(torch.randn(20000)) ** 2
    lo, hi = 0.0, float(x.max())
    errors = [quantization_error(x, activation_quantizer(x, lo, hi, b)(x)) for b in range(2, 9)]
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False))
    for bits in (2, 3):
        mse = quantization_error(x, activation_quantizer(x, lo, hi, bits, "mse")(x))
        minmax = quantization_error(x, activation_quantizer(x, lo, hi, bits, "minmax")(x))
        assert mse < minmax
    clipped = activation_quantizer(x, lo, hi, 8, "percentile", percentile=99.0)
    assert clipped.scale * clipped.q_max == pytest.approx(float(torch.quantile(x, 0.99)), rel=1e-5)


def test_straight_through_gradient():
    x = torch.linspace(-1, 3, 101, requires_grad=True)
    q = activation_quantizer(x.detach(), 0.0, 2.0, 3, "minmax")
    q(x).sum().backward()
    levels = torch.round(x.detach() / q.scale) + q.zero_point
    inside = (levels >= q.q_min) & (levels <= q.q_max)
    assert torch.equal(x.grad, inside.float())
    assert 0 < int(inside.sum()) < x.numel()


def test_plain_arithmetic_values_match_the_fused_kernel():
    torch.manual_seed(4)
    x = torch.randn(5000) * 3
    for lo, hi, bits in [(0.0, 2.5, 4), (-1.5, 4.0, 3), (-2.0, 2.0, 8)]:
        q = activation_quantizer(x, lo, hi, bits, "minmax")
        assert torch.allclose(q.values(x), q(x), atol=1e-6 * q.scale * q.q_max)


def _one_at_a_time(error_of_ratio, lo: float = 0.02, hi: float = 1.0) -> torch.Tensor:
    """The range search as it ran before issue 16: one bit-width, one grid point per tensor operation."""
    coarse = torch.linspace(lo, hi, 40)
    errors = torch.stack([error_of_ratio(torch.full_like(coarse[:1], r)) for r in coarse.tolist()])
    best, best_error = coarse[errors.argmin(dim=0)], errors.min(dim=0).values
    step = (hi - lo) / 39
    for offset in torch.linspace(-step, step, 20).tolist():
        ratio = (best + offset).clamp(lo, hi)
        err = error_of_ratio(ratio)
        better = err < best_error
        best, best_error = torch.where(better, ratio, best), torch.where(better, err, best_error)
    return best


def _reference_weight_scale(weight: torch.Tensor, bits: int) -> torch.Tensor:
    rows = weight.reshape(weight.shape[0], -1)
    q_max, abs_max = symmetric_levels(bits), rows.abs().amax(dim=1)

    def error(ratio: torch.Tensor) -> torch.Tensor:
        scale = (abs_max * ratio / q_max).clamp_min(torch.finfo(torch.float32).tiny).unsqueeze(1)
        return ((torch.clamp(torch.round(rows / scale), -q_max, q_max) * scale) - rows).pow(2).sum(dim=1)

    return (abs_max * _one_at_a_time(error) / q_max).clamp_min(torch.finfo(torch.float32).tiny)


def _reference_activation(sample: torch.Tensor, lo: float, hi: float, bits: int) -> tuple[float, int]:
    def quantizer(ratio: float) -> QuantParams:
        q_max = 2**bits - 1
        if lo >= 0:
            return QuantParams(max(hi * ratio, 1e-12) / q_max, 0, 0, q_max)
        low, high = min(lo * ratio, 0.0), max(hi * ratio, 0.0)
        scale = max(high - low, 1e-12) / q_max
        return QuantParams(scale, int(min(max(round(-low / scale), 0), q_max)), 0, q_max)

    def error(ratio: torch.Tensor) -> torch.Tensor:
        q = quantizer(float(ratio))
        levels = torch.clamp(torch.round(sample * (1.0 / q.scale)) + q.zero_point, q.q_min, q.q_max)
        return ((levels - q.zero_point) * q.scale - sample).pow(2).sum().reshape(1)

    found = quantizer(float(_one_at_a_time(error)[0]))
    return found.scale, found.zero_point


def test_every_bit_width_searched_at_once_equals_one_at_a_time_bit_for_bit():
    generator = torch.Generator().manual_seed(7)
    bits = list(range(2, 9))
    weight = torch.randn(12, 5, 3, 3, generator=generator) * torch.rand(12, 1, 1, 1, generator=generator)
    scales = weight_scales(weight, bits)
    for row, b in zip(scales, bits, strict=True):
        assert torch.equal(row, _reference_weight_scale(weight, b)), b
    for sample in (torch.randn(3000, generator=generator).relu(), torch.randn(3000, generator=generator) - 0.3):
        lo, hi = float(sample.min()), float(sample.max())
        found = activation_quantizers(ActivationSample(sample, lo, hi), bits)
        assert [(q.scale, q.zero_point) for q in found] == [_reference_activation(sample, lo, hi, b) for b in bits]
