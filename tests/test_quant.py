"""Quantizers: error falls with bits, per-channel beats per-tensor, range methods, STE gradients."""

import pytest
import torch

from mpq_rl.quant import (
    activation_quantizer,
    quantization_error,
    quantize_weight,
    symmetric_levels,
    weight_scale,
)


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
        scale = weight_scale(weight, bits).reshape(-1, 1, 1, 1)
        levels = torch.round(q / scale)
        assert torch.allclose(levels * scale, q, atol=1e-6)
        assert levels.abs().max() <= symmetric_levels(bits)
        assert all(torch.unique(levels[c]).numel() <= 2 * symmetric_levels(bits) + 1 for c in range(32))


def test_float_bits_leave_weights_untouched(weight):
    assert quantize_weight(weight, 16) is weight
    assert quantize_weight(weight, 32) is weight


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
