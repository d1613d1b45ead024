"""Hardware cost models: published numbers, hand-computed cycles, HAQ's real table, invariants and errors."""

from __future__ import annotations

import dataclasses
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from mpq_rl.config import HardwareConfig
from mpq_rl.errors import UserError
from mpq_rl.hardware import BITS, PRESETS, CostTable, build_cost_table
from mpq_rl.hardware.bitfusion import BitFusion, fusion_factor
from mpq_rl.hardware.energy import accumulator_bits, adder_pj, int_multiplier_pj, mac_pj, multiplier_pj
from mpq_rl.hardware.shapes import LayerShapes, bit_grid
from mpq_rl.workloads.imagenet_models import mobilenet_v2, resnet18
from mpq_rl.workloads.layers import LayerTable, discover_layers

HAQ_TABLE = Path(__file__).parents[1] / "data" / "haq_mobilenetv2_imagenet100_b16_latency.npy"

# HAQ's published MobileNetV2 policy at 0.6 of W8A8 latency ([w_bits, a_bits] per layer, -1 = input unquantized).
HAQ_POLICY = [
    [8, -1], [7, 7], [5, 6], [4, 6], [5, 6], [5, 7], [5, 6], [7, 4], [4, 6], [4, 6], [7, 7], [5, 6], [4, 6], [7, 3],
    [5, 7], [4, 7], [7, 3], [5, 7], [4, 7], [7, 7], [4, 7], [4, 7], [6, 4], [6, 7], [4, 7], [7, 4], [6, 7], [5, 7],
    [7, 4], [6, 7], [5, 7], [7, 4], [6, 7], [6, 7], [6, 4], [5, 7], [6, 7], [6, 4], [5, 7], [6, 7], [7, 7], [4, 7],
    [7, 7], [7, 7], [4, 7], [7, 7], [7, 7], [4, 7], [7, 7], [7, 7], [4, 7], [7, 7], [8, 8],
]  # fmt: skip

ANALYTIC = [name for name in PRESETS if name != "lut"]
ROOFLINE = ["bitfusion", "bismo_pynq", "bismo_ultra96", "stripes", "loom", "t4", "a100"]


def uniform(names, w, a):
    return {name: (w, a) for name in names}


@pytest.fixture(scope="module")
def mobilenet100() -> LayerTable:
    """MobileNetV2 for ImageNet-100, the model of HAQ's released table."""
    torch.manual_seed(0)
    return discover_layers(mobilenet_v2(num_classes=100), torch.zeros(1, 3, 224, 224), "mobilenet_v2")


@pytest.fixture(scope="module")
def resnet18_layers() -> LayerTable:
    torch.manual_seed(0)
    return discover_layers(resnet18(), torch.zeros(1, 3, 224, 224), "resnet18")


@pytest.fixture(scope="module")
def haq_costs(mobilenet100: LayerTable) -> CostTable:
    return build_cost_table(mobilenet100, HardwareConfig(preset="lut", table=HAQ_TABLE))


def costs_for(preset: str, layers: LayerTable, haq: CostTable, **overrides) -> CostTable:
    if preset == "lut":
        return haq
    return build_cost_table(layers, HardwareConfig(preset=preset, overrides=overrides))


# ----- HAQ's real table through the lut preset -----


def test_haq_published_policy_costs_its_published_ratio(mobilenet100, haq_costs):
    assert len(mobilenet100) == 53
    policy = {name: (w, 8 if a == -1 else a) for name, (w, a) in zip(mobilenet100.names, HAQ_POLICY, strict=True)}
    assert haq_costs.reference("latency") == 39_624_933
    assert round(haq_costs.total(policy, "latency") / haq_costs.reference("latency"), 4) == 0.5965
    w2a2 = uniform(mobilenet100.names, 2, 2)
    assert round(haq_costs.total(w2a2, "latency") / haq_costs.reference("latency"), 4) == 0.1783


def test_haq_table_defines_only_what_it_measured(mobilenet100, haq_costs):
    assert np.isnan(haq_costs.latency[:, haq_costs.bit_index(16), :]).all()
    assert not haq_costs.defines("energy")
    assert not haq_costs.memory_bound(uniform(mobilenet100.names, 8, 8)).any()
    with pytest.raises(
        UserError, match=r"no latency for layer 'features.0.0' at W16A8.*w_bits \[2, 3, 4, 5, 6, 7, 8\]"
    ):
        haq_costs.total(uniform(mobilenet100.names, 16, 8), "latency")
    with pytest.raises(UserError, match="gives no energy"):
        haq_costs.total(uniform(mobilenet100.names, 8, 8), "energy")
    assert math.isnan(haq_costs.totals(uniform(mobilenet100.names, 8, 8))["energy"])


# ----- published constants and hand-computed numbers -----


def test_bitfusion_per_operand_factors():
    assert fusion_factor(np.array([2, 3, 4, 5, 6, 7, 8])).tolist() == [4, 2, 2, 1, 1, 1, 1]
    assert fusion_factor(np.array([16, 32])).tolist() == [0.5, 0.25]  # our extension: 16x16 = 4x the 8x8 cycles


def test_bitfusion_cycles_of_one_convolution(resnet18_layers):
    # ResNet-18 layer1.0.conv1: 64 -> 64 channels, 3x3, 56x56 outputs; batch 16 on the 16x32 array (N=16, M=32).
    # cycles = B * ceil(OC/M) * OH*OW * K^2 * ceil(IC / (N * factor_w * factor_a))
    #   W8A8: factor 1*1 = 1  -> 16 * ceil(64/32) * 3136 * 9 * ceil(64/16) = 16 * 2 * 3136 * 9 * 4 = 3,612,672
    #   W4A8: factor 2*1 = 2  -> 16 * 2 * 3136 * 9 * ceil(64/32) = 1,806,336
    #   W4A4: factor 2*2 = 4  -> 16 * 2 * 3136 * 9 * ceil(64/64) =   903,168
    #   W2A2: factor 4*4 = 16 -> ceil(64/256) = 1 as well: the array's rows are already full, so no further gain.
    index = resnet18_layers.index_of("layer1.0.conv1")
    shapes = LayerShapes.from_table(LayerTable((resnet18_layers[index],)))
    model = BitFusion(array="16x32", batch_size=16, mapping="channels")
    cycles = {
        (w, a): model.cycles(shapes, np.float64(w), np.float64(a)).item() for w, a in [(8, 8), (4, 8), (4, 4), (2, 2)]
    }
    assert cycles == {(8, 8): 3_612_672, (4, 8): 1_806_336, (4, 4): 903_168, (2, 2): 903_168}
    # At 500 MHz, W8A8 compute takes 3,612,672 / 5e8 s = 7.225 ms; the layer is compute-bound, so that is its latency.
    costs = build_cost_table(resnet18_layers, HardwareConfig(preset="bitfusion", overrides={"mapping": "channels"}))
    i8 = costs.bit_index(8)
    assert costs.latency[index, i8, i8] == pytest.approx(3_612_672 / 500e6)
    assert not costs.memory_bound_table[index, i8, i8]


def test_horowitz_qtools_energy_per_operation():
    assert int_multiplier_pj(8, 8) == pytest.approx(0.200, abs=5e-4)
    assert int_multiplier_pj(32, 32) == pytest.approx(3.100, abs=5e-4)
    assert multiplier_pj(8, 8) == int_multiplier_pj(8, 8)
    assert multiplier_pj(16, 4) == pytest.approx(1.1)  # fp16 multiply (Horowitz)
    assert multiplier_pj(32, 32) == pytest.approx(3.7)  # fp32 multiply (Horowitz): 32 bits mean floating point
    assert adder_pj(32) == pytest.approx(0.1)
    assert accumulator_bits(np.float64(576), 8, 8) == 10 + 15  # ceil(log2 576) + 8 + 8 - 1
    assert mac_pj(8, 8, 576) == pytest.approx(0.2 + 0.003125 * 25, abs=5e-4)


def test_resnet18_macs_and_bops(resnet18_layers):
    assert resnet18_layers.total_macs == pytest.approx(1.81e9, rel=0.01)
    costs = build_cost_table(resnet18_layers, HardwareConfig(preset="bops"))
    w8a8 = uniform(resnet18_layers.names, 8, 8)
    assert costs.total(w8a8, "bops") == pytest.approx(116e9, rel=0.02)
    assert costs.total(w8a8, "bops") == 64 * resnet18_layers.total_macs
    fp32 = uniform(resnet18_layers.names, 32, 32)
    assert costs.total(fp32, "bops") == pytest.approx(1858e9, rel=0.02)
    # HAWQ-V3's 34 GBOPs W4A4 point keeps the first and last layers at 8 bits.
    mixed = uniform(resnet18_layers.names, 4, 4) | {"conv1": (8, 8), "fc": (8, 8)}
    assert costs.total(mixed, "bops") == pytest.approx(34e9, rel=0.03)


def test_size_is_parameters_times_weight_bits(resnet18_layers):
    costs = build_cost_table(resnet18_layers, HardwareConfig(preset="size"))
    biases = 1000  # only fc has a bias, kept at 32 bits
    total = costs.total(uniform(resnet18_layers.names, 8, 2), "size")
    assert total == (resnet18_layers.total_params - biases) * 8 + biases * 32
    assert total / 8 / 2**20 == pytest.approx(11.1, abs=0.1)  # HAWQ: ResNet-18 is 11.1 MB at 8 bits


# ----- invariants over every preset -----


@pytest.mark.parametrize("preset", list(PRESETS))
def test_lower_bits_never_cost_more(preset, mobilenet100, haq_costs):
    costs = costs_for(preset, mobilenet100, haq_costs)
    assert costs.bits == BITS
    for metric in ("latency", "energy", "size", "bops"):
        table = costs.metric(metric)
        assert table.shape == (53, len(BITS), len(BITS))
        if not costs.defines(metric):
            continue
        measured = table[:, :7, :7] if preset == "lut" else table
        assert np.isfinite(measured).all() and (measured > 0).all(), metric
        assert (np.diff(measured, axis=1) >= 0).all(), f"{preset} {metric} rises as w_bits fall"
        assert (np.diff(measured, axis=2) >= 0).all(), f"{preset} {metric} rises as a_bits fall"


@pytest.mark.parametrize("preset", ANALYTIC)
def test_every_analytic_preset_has_energy_and_a_cheaper_w4a4(preset, mobilenet100):
    costs = build_cost_table(mobilenet100, HardwareConfig(preset=preset))
    w4a4 = uniform(mobilenet100.names, 4, 4)
    for metric in ("latency", "energy", "size", "bops"):
        assert 0 < costs.total(w4a4, metric) < costs.reference(metric), metric


def test_size_depends_on_weight_bits_only(mobilenet100):
    costs = build_cost_table(mobilenet100, HardwareConfig(preset="t4"))
    assert (costs.size == costs.size[:, :, :1]).all()


# ----- memory-boundness, as in HAQ's table -----


@pytest.mark.parametrize(
    ("preset", "overrides"),
    [("bitfusion", {}), ("bismo_ultra96", {}), ("bismo_pynq", {"batch_size": 16})],
)
def test_depthwise_follows_activation_bits_and_classifier_weight_bits(preset, overrides, mobilenet100):
    costs = build_cost_table(mobilenet100, HardwareConfig(preset=preset, overrides=overrides))
    lat, bound = costs.latency, costs.memory_bound_table
    i2, i8 = costs.bit_index(2), costs.bit_index(8)
    depthwise = [i for i, layer in enumerate(mobilenet100) if layer.is_depthwise]
    assert len(depthwise) == 17
    assert bound[depthwise, i8, i8].all() and bound[depthwise, i2, i2].all()
    assert (lat[depthwise, i8, i2] < 0.9 * lat[depthwise, i8, i8]).all()  # fewer activation bits: faster
    assert (lat[depthwise, i2, i8] > 0.93 * lat[depthwise, i8, i8]).all()  # fewer weight bits: about the same
    fc = mobilenet100.index_of("classifier.1")
    assert bound[fc, i8, i8]
    assert lat[fc, i2, i8] < 0.4 * lat[fc, i8, i8]
    assert lat[fc, i8, i2] > 0.85 * lat[fc, i8, i8]


def test_bismo_pointwise_convolution_is_a_roofline(mobilenet100):
    # HAQ's table: 1x1 convolutions scale with w_bits * a_bits down to a memory floor.
    costs = build_cost_table(mobilenet100, HardwareConfig(preset="bismo_ultra96"))
    index = mobilenet100.index_of("features.8.conv.2")  # 384 -> 64 channels at 14x14, batch 16
    i = {b: costs.bit_index(b) for b in (2, 4, 8)}
    lat, bound = costs.latency[index], costs.memory_bound_table[index]
    assert not bound[i[8], i[8]] and not bound[i[4], i[8]] and bound[i[2], i[2]]
    assert lat[i[8], i[8]] == pytest.approx(2 * lat[i[4], i[8]], rel=0.01)  # compute: ~ w_bits * a_bits
    assert lat[i[8], i[8]] / lat[i[2], i[2]] < 0.9 * 16  # less than the 16x of w_bits * a_bits: memory floor


def test_batch_size_and_stripes_loom_scaling(mobilenet100):
    small = build_cost_table(mobilenet100, HardwareConfig(preset="bitfusion", overrides={"batch_size": 1}))
    large = build_cost_table(mobilenet100, HardwareConfig(preset="bitfusion", overrides={"batch_size": 64}))
    assert large.reference("latency") > 20 * small.reference("latency")
    assert small.batch_size == 1 and large.batch_size == 64
    i = {b: BITS.index(b) for b in (2, 4, 8)}
    convs = [k for k, layer in enumerate(mobilenet100) if not layer.is_linear]
    stripes = build_cost_table(mobilenet100, HardwareConfig(preset="stripes")).latency[convs]
    assert stripes[:, i[2], i[8]] == pytest.approx(stripes[:, i[8], i[8]])  # weights are bit-parallel
    assert stripes[:, i[8], i[4]] == pytest.approx(stripes[:, i[8], i[8]] / 2, rel=0.05)  # time ~ a_bits
    loom = build_cost_table(mobilenet100, HardwareConfig(preset="loom")).latency
    fc = mobilenet100.index_of("classifier.1")
    assert loom[fc, i[8], i[2]] == pytest.approx(loom[fc, i[8], i[8]])  # FC: weights serial only
    assert loom[fc, i[4], i[8]] == pytest.approx(loom[fc, i[8], i[8]] / 2, rel=0.05)


def test_gpu_modes_are_a_step_function_with_the_int4_reduction_rule(mobilenet100):
    t4 = build_cost_table(mobilenet100, HardwareConfig(preset="t4", overrides={"launch_overhead_s": 0.0}))
    lat = t4.latency
    b = {x: BITS.index(x) for x in (2, 3, 4, 5, 8, 16)}
    assert (lat[:, b[2], b[2]] == lat[:, b[4], b[3]]).all()  # INT4 mode for every width <= 4
    assert (lat[:, b[5], b[8]] == lat[:, b[8], b[8]]).all()  # INT8 mode for 5..8
    first = mobilenet100.index_of("features.0.0")  # reduction 3 * 3 * 3 = 27 <= 64: no INT4 gain on Turing
    shapes, (w, a) = LayerShapes.from_table(mobilenet100), bit_grid()
    compute_only = dataclasses.replace(PRESETS["t4"].model, dram_gb_per_s=1e9, launch_overhead_s=0.0)
    ruled = compute_only.cost(shapes, w, a).latency
    unruled = dataclasses.replace(compute_only, int4_no_gain_max_reduction=0).cost(shapes, w, a).latency
    assert unruled[first, b[4], b[4]] == pytest.approx(unruled[first, b[8], b[8]] / 2)
    assert ruled[first, b[4], b[4]] == pytest.approx(ruled[first, b[8], b[8]])
    big = mobilenet100.index_of("features.18.0")  # reduction 320: INT4 runs at twice the INT8 rate
    assert ruled[big, b[4], b[4]] == pytest.approx(ruled[big, b[8], b[8]] / 2)
    assert lat[:, b[16], b[16]].sum() > lat[:, b[8], b[8]].sum()


# ----- the CostTable interface -----


def test_cost_table_lookups_and_pickling(mobilenet100):
    costs = build_cost_table(mobilenet100, HardwareConfig(preset="bitfusion"))
    policy = uniform(mobilenet100.names, 4, 6)
    w, a = costs.bit_index(4), costs.bit_index(6)
    assert costs.per_layer(policy, "energy") == pytest.approx(costs.energy[:, w, a])
    assert costs.total(policy, "latency") == pytest.approx(costs.latency[:, w, a].sum())
    assert set(costs.totals(policy)) == {"latency", "energy", "size", "bops"}
    assert costs.memory_bound(policy).dtype == bool and costs.memory_bound(policy).shape == (53,)
    copy = pickle.loads(pickle.dumps(costs))
    assert copy.total(policy, "bops") == costs.total(policy, "bops")
    assert copy.layer_names == costs.layer_names


def test_thousand_layer_table_builds_fast(mobilenet100):
    import time

    layers = LayerTable(
        tuple(
            type(layer)(**{**layer.__dict__, "name": f"{layer.name}.{k}", "index": k * 53 + layer.index})
            for k in range(19)
            for layer in mobilenet100
        )
    )
    assert len(layers) == 1007
    for preset in ANALYTIC:
        start = time.perf_counter()
        build_cost_table(layers, HardwareConfig(preset=preset))
        assert time.perf_counter() - start < 0.5, preset


# ----- errors a user can fix -----


def test_unknown_preset_lists_the_presets(mobilenet100):
    with pytest.raises(UserError, match=r"unknown hardware.preset 'tpu'.*bitfusion.*bismo_pynq.*lut"):
        build_cost_table(mobilenet100, HardwareConfig(preset="tpu"))


def test_unknown_override_names_the_allowed_keys(mobilenet100):
    with pytest.raises(UserError, match=r"hardware.overrides.batchsize .*allowed keys: array, batch_size, clock_hz"):
        build_cost_table(mobilenet100, HardwareConfig(preset="bitfusion", overrides={"batchsize": 4}))
    with pytest.raises(UserError, match=r"array must be one of \['8x8', '16x32'\], got '4x4'"):
        build_cost_table(mobilenet100, HardwareConfig(preset="bitfusion", overrides={"array": "4x4"}))
    with pytest.raises(UserError, match="batch_size must be of type int"):
        build_cost_table(mobilenet100, HardwareConfig(preset="t4", overrides={"batch_size": "16"}))
    with pytest.raises(UserError, match="only read by the 'lut' preset"):
        build_cost_table(mobilenet100, HardwareConfig(preset="t4", table=HAQ_TABLE))


def test_bitfusion_array_override_changes_the_array(mobilenet100):
    small = build_cost_table(mobilenet100, HardwareConfig(preset="bitfusion", overrides={"array": "8x8"}))
    big = build_cost_table(mobilenet100, HardwareConfig(preset="bitfusion"))
    assert small.reference("latency") > big.reference("latency")


def test_cost_table_rejects_bad_policies(mobilenet100):
    costs = build_cost_table(mobilenet100, HardwareConfig(preset="bops"))
    policy = uniform(mobilenet100.names, 8, 8)
    with pytest.raises(UserError, match="bit-width 1 is not in the cost table"):
        costs.total(policy | {"classifier.1": (1, 8)}, "bops")
    with pytest.raises(UserError, match="no bits for layer 'classifier.1'"):
        costs.total({k: v for k, v in policy.items() if k != "classifier.1"}, "bops")
    with pytest.raises(UserError, match="unknown cost metric 'speed'"):
        costs.metric("speed")


def test_bitfusion_im2col_mapping_fills_the_rows_for_few_input_channels(resnet18_layers):
    # ResNet-18 conv1: 3 -> 64 channels, 7x7, 112x112 outputs, batch 1 on the 16x32 array.
    #   channels: 1 * ceil(64/32) * 12544 * 49 * ceil(3/16)       = 2 * 12544 * 49 = 1,229,312 at any bits
    #   im2col:   1 * 12544 * ceil(64/32) * ceil(49*3 / 16)       = 2 * 12544 * 10 =   250,880 at W8A8
    #             W2A2 (factor 16): ceil(147 / 256) = 1           = 2 * 12544      =    25,088
    index = resnet18_layers.index_of("conv1")
    shapes = LayerShapes.from_table(LayerTable((resnet18_layers[index],)))

    def cycles(mapping: str, bits: int) -> float:
        model = BitFusion(batch_size=1, mapping=mapping)
        return model.cycles(shapes, np.float64(bits), np.float64(bits)).item()

    assert cycles("channels", 8) == cycles("channels", 2) == 1_229_312
    assert (cycles("im2col", 8), cycles("im2col", 2)) == (250_880, 25_088)
    assert cycles("best", 8) == 250_880
    with pytest.raises(UserError, match="mapping must be one of"):
        build_cost_table(resnet18_layers, HardwareConfig(preset="bitfusion", overrides={"mapping": "diagonal"}))
