"""Group-wise weight formats: the reference formulas, ggml's GGUF types, and their bits per weight."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mpq_rl.errors import UserError
from mpq_rl.quantization import formats, groupwise
from mpq_rl.quantization.policy import load_policy, save_policy


def reference(weight: np.ndarray, bits: int, group: int, symmetric: bool) -> np.ndarray:
    """The formula of the groupwise docstring, written out per group in float64 on float32 inputs."""
    out = np.empty_like(weight, dtype=np.float64)
    flat, result = weight.reshape(-1, group), out.reshape(-1, group)
    for i, g in enumerate(flat):
        if symmetric:
            half = 2 ** (bits - 1)
            m = g[np.argmax(np.abs(g))]
            d = np.float32(m) / np.float32(-half)
            inv = np.float32(0.0) if d == 0 else np.float32(1.0) / d
            q = np.clip(np.trunc(g * inv + np.float32(half + 0.5)), 0, 2 * half - 1)
            result[i] = (q - half) * np.float64(np.float16(d))
        else:
            lo, hi = g.min(), g.max()
            d = (hi - lo) / np.float32(2**bits - 1)
            inv = np.float32(0.0) if d == 0 else np.float32(1.0) / d
            q = np.clip(np.trunc((g - lo) * inv + np.float32(0.5)), 0, 2**bits - 1)
            result[i] = q * np.float64(np.float16(d)) + np.float64(np.float16(lo))
    return out


@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8])
@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("symmetric", [True, False])
def test_group_formats_follow_the_reference_formula(bits, group, symmetric):
    weight = (torch.randn(6, 256, generator=torch.Generator().manual_seed(bits * group)) * 0.05).float()
    weight[0, :group] = 0.0  # an all-zero group stays zero
    name = f"int{bits}_g{group}{'' if symmetric else '_asym'}"
    fmt = groupwise.block_format(groupwise.block_code(name))
    ours = fmt.quantize(weight).double().numpy()
    np.testing.assert_allclose(ours, reference(weight.numpy(), bits, group, symmetric), rtol=1e-6, atol=1e-9)
    assert np.all(ours[0, :group] == 0.0)
    # one float16 scale per group (and a float16 minimum when asymmetric)
    assert fmt.bits_per_weight == pytest.approx(bits + (16 if symmetric else 32) / group)
    levels = [len(np.unique(row)) for row in ours.reshape(-1, group)]
    assert max(levels) <= 2**bits


@pytest.mark.parametrize(("name", "bpw"), [("q4_0", 4.5), ("q4_1", 5.0), ("q5_0", 5.5), ("q5_1", 6.0), ("q8_0", 8.5)])
def test_gguf_types_match_gguf_py_bit_for_bit(name, bpw):
    quants = pytest.importorskip("gguf.quants", reason="the gguf package (llm extra) is not installed")
    from gguf import GGMLQuantizationType

    qtype = getattr(GGMLQuantizationType, name.upper())
    weight = torch.randn(16, 576, generator=torch.Generator().manual_seed(7)) * 0.03
    weight[3, 32:64] = 0.0
    weight[5, :32] = torch.linspace(-1, 1, 32)  # exact ties of the rounding
    expected = quants.dequantize(quants.quantize(weight.numpy(), qtype), qtype)
    fmt = groupwise.block_format(groupwise.block_code(name))
    assert np.array_equal(fmt.quantize(weight).numpy(), expected)
    # ggml's size: bytes per block * 8 / weights per block
    block, type_size = quants.GGML_QUANT_SIZES[qtype]
    assert fmt.bits_per_weight == bpw == type_size * 8 / block


def test_a_width_that_is_not_a_multiple_of_the_group_is_refused():
    with pytest.raises(UserError, match="not a multiple of int4_g128's group of 128"):
        groupwise.weight_quantizer(torch.zeros(4, 576), groupwise.block_code("int4_g128"), "mlp.up")
    with pytest.raises(UserError, match="unknown weight format 'q4_k'"):
        groupwise.block_code("q4_k")


def test_codes_run_from_fewest_bits_per_weight_and_label_by_name():
    codes = groupwise.codes_by_size(["q8_0", "int2_g64_asym", "q4_0", "int3_g128"])
    assert [formats.label(c) for c in codes] == ["int2_g64_asym", "int3_g128", "q4_0", "q8_0"]
    assert [formats.bits_of(c) for c in codes] == [2, 3, 4, 8]


def test_the_straight_through_gradient_passes(tmp_path):
    weight = torch.randn(2, 64, requires_grad=True)
    quantizer = groupwise.weight_quantizer(weight, groupwise.block_code("q4_0"), "w")
    quantizer.fake_quantize(weight).sum().backward()
    assert torch.equal(weight.grad, torch.ones_like(weight))


def test_policy_files_keep_group_formats(tmp_path):
    policy = {"a": (groupwise.block_code("q5_1"), 32), "b": (groupwise.block_code("int3_g64_asym"), 32)}
    path = tmp_path / "policy.json"
    save_policy(path, policy)
    assert load_policy(path) == policy
