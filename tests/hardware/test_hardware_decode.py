"""The decode-latency model (mpq_rl.hardware.decode) against hand-computed rooflines on one SmolLM2-sized layer."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from mpq_rl.config import HardwareConfig
from mpq_rl.hardware import PRESETS, build_cost_table
from mpq_rl.hardware.decode import A100_DECODE, APPLE_M2_DECODE
from mpq_rl.hardware.shapes import LayerShapes
from mpq_rl.workloads.layers import discover_layers

IN, OUT, TOKENS = 576, 1536, 8
DECODE_PRESETS = [name for name in PRESETS if name.endswith("_decode")]


@pytest.fixture(scope="module")
def shapes() -> LayerShapes:
    """One bias-free 576 -> 1536 projection (SmolLM2-135M's ffn_up) over a sequence of 8 tokens."""
    model = nn.Sequential(nn.Linear(IN, OUT, bias=False))
    return LayerShapes.from_table(discover_layers(model, torch.zeros(1, TOKENS, IN), "ffn_up"))


def costs(device, shapes, w_bits, a_bits=16.0):
    return device.cost(shapes, np.array([[[w_bits]]]), np.array([[[a_bits]]]))


def test_decode_moves_the_weights_once_per_token(shapes):
    # Q4_0 stores 4.5 bits per weight; the input and output vectors move at 16 bits.
    bits = IN * OUT * 4.5 + (IN + OUT) * 16
    expected_s = bits / (1555 * 8e9 * 0.7)
    result = costs(A100_DECODE, shapes, 4.5)
    assert result.latency.item() == pytest.approx(expected_s, rel=1e-12)
    assert result.memory_bound.item()
    # halving the stored bits nearly halves decode time: the memory term is all that counts
    ratio = costs(A100_DECODE, shapes, 8.5).latency.item() / result.latency.item()
    assert ratio == pytest.approx((IN * OUT * 8.5 + (IN + OUT) * 16) / bits, rel=1e-12)


def test_prefill_is_bound_by_compute(shapes):
    device = dataclasses.replace(APPLE_M2_DECODE, prompt_tokens=512, new_tokens=0)
    compute_s = 2 * 512 * IN * OUT / (3.6e12 * 0.5)
    memory_s = (IN * OUT * 4.5 + 512 * (IN + OUT) * 16) / (100 * 8e9 * 0.7)
    assert compute_s > memory_s
    assert costs(device, shapes, 4.5).latency.item() == pytest.approx(compute_s, rel=1e-12)
    # and then weight bits barely matter for it
    assert costs(device, shapes, 8.5).latency.item() == pytest.approx(compute_s, rel=1e-12)


def test_large_batches_make_decode_compute_bound(shapes):
    device = dataclasses.replace(APPLE_M2_DECODE, batch_size=4096)
    assert not costs(device, shapes, 4.5).memory_bound.item()


@pytest.mark.parametrize("preset", DECODE_PRESETS)
def test_decode_presets_rank_bits_and_devices(preset):
    model = nn.Sequential(nn.Linear(IN, OUT, bias=False), nn.Linear(OUT, IN, bias=False))
    layers = discover_layers(model, torch.zeros(1, TOKENS, IN), "mlp")
    table = build_cost_table(layers, HardwareConfig(preset=preset))
    latency = table.latency[:, :, table.bits.index(16)]
    assert np.all(np.diff(latency, axis=1) >= 0), "more weight bits never decode faster"
    slower = build_cost_table(layers, HardwareConfig(preset="laptop_ddr5_decode")).latency
    assert np.all(slower >= table.latency), "the laptop CPU has the least bandwidth of the four"


def test_gguf_formats_are_priced_at_their_stored_bits(shapes):
    from mpq_rl.quantization import groupwise

    model = nn.Sequential(nn.Linear(IN, OUT, bias=False))
    layers = discover_layers(model, torch.zeros(1, TOKENS, IN), "ffn_up")
    q4_0, q8_0 = groupwise.block_code("q4_0"), groupwise.block_code("q8_0")
    table = build_cost_table(layers, HardwareConfig(preset="a100_decode"), codes=(q4_0, q8_0))
    float_bits = table.bits.index(32)
    latency = {code: table.latency[0, table.bits.index(code), float_bits] for code in (q4_0, q8_0)}
    vector_bits = (IN + OUT) * 32
    assert latency[q8_0] / latency[q4_0] == pytest.approx(
        (IN * OUT * 8.5 + vector_bits) / (IN * OUT * 4.5 + vector_bits), rel=1e-12
    )
