"""Export for speed (mpq_rl.deployment.bn_fold, mpq_rl.deployment.kernels): BatchNorm folded exactly, every layer kind
exported at every bit-width 2..8 and run in onnxruntime like the simulation, kernels read from onnxruntime."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import numpy_helper, version_converter  # noqa: E402

from mpq_rl.config import RunConfig  # noqa: E402
from mpq_rl.deployment.bn_fold import fold_batchnorm  # noqa: E402
from mpq_rl.deployment.export import OPSET, export_onnx, quantized_for_export, replace_markers, trace_onnx  # noqa: E402
from mpq_rl.deployment.export_check import ExportCheck  # noqa: E402
from mpq_rl.deployment.kernels import (  # noqa: E402
    FLOAT_WEIGHTS,
    kernel_summary,
    layer_kernels,
    optimized_graph,
    why_not_faster,
)
from mpq_rl.quantization.qat import LsqAttachment, calibrated_scales  # noqa: E402
from mpq_rl.runs.assembly import assemble_workload  # noqa: E402
from mpq_rl.search.evaluator import calibrated_simulator  # noqa: E402
from mpq_rl.workloads.model_io import model_outputs  # noqa: E402
from mpq_rl.workloads.workload import Workload  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

SAMPLES = 256
CLASSES = 6


def _bn(channels: int, dims: int = 2) -> nn.Module:
    """A BatchNorm with non-trivial statistics and some negative scales (channels whose integers change sign)."""
    bn = nn.BatchNorm2d(channels) if dims == 2 else nn.BatchNorm1d(channels)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5).mul_(torch.where(torch.arange(channels) % 3 == 1, -1.0, 1.0))
        bn.bias.uniform_(-0.2, 0.2)
        bn.running_mean.uniform_(-0.3, 0.3)
        bn.running_var.uniform_(0.5, 2.0)
    return bn


class Convs(nn.Module):
    """A strided stem, a depthwise, a grouped and a pointwise convolution (each with BatchNorm), pool, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.stem_bn = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False), _bn(8)
        self.dw, self.dw_bn = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), _bn(8)
        self.grouped, self.grouped_bn = nn.Conv2d(8, 16, 3, padding=1, groups=2, bias=False), _bn(16)
        self.pw, self.pw_bn = nn.Conv2d(16, 16, 1), _bn(16)
        self.head = nn.Linear(16, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem_bn(self.stem(x)))
        x = torch.relu(self.dw_bn(self.dw(x)))
        x = torch.relu(self.grouped_bn(self.grouped(x)))
        x = torch.relu(self.pw_bn(self.pw(x)))
        return self.head(x.mean(dim=(2, 3)))


class Sequence1d(nn.Module):
    """Conv1d with BatchNorm on [batch, channels, length], then a linear layer on the 3-D [batch, length, channels]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv1d(4, 12, 3, padding=1, bias=False), _bn(12, dims=1)
        self.mix = nn.Linear(12, 12)
        self.head = nn.Linear(12, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x))).transpose(1, 2)
        return self.head(torch.relu(self.mix(x)).mean(dim=1))


class Encoder(nn.Module):
    """One ``nn.TransformerEncoderLayer`` (attention projections, feed-forward linears on 3-D inputs), then a head."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.head = nn.Linear(16, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x).mean(dim=1))


MODELS = {
    "convs": (Convs, (3, 8, 8)),
    "conv1d": (Sequence1d, (4, 10)),
    "attention": (Encoder, (5, 16)),
}


def workload_of(name: str) -> Workload:
    """A seeded model on random inputs, labelled by its own FP32 predictions."""
    build, shape = MODELS[name]
    torch.manual_seed(0)
    model = build().eval()
    inputs = torch.randn(SAMPLES, *shape)
    with torch.no_grad():
        split = TensorDataset(inputs, model(inputs).argmax(dim=1))
    config = RunConfig.model_validate(
        {"data": {"batch_size": 64, "calibration_samples": SAMPLES}, "proxy": {"metric": "top1"}, "budget": 1.0}
    )
    return assemble_workload(config, model, {"calibration": split, "test": split, "train": split})


@pytest.fixture(scope="module")
def workloads() -> dict[str, Workload]:
    return {name: workload_of(name) for name in MODELS}


def _simulated(workload: Workload, scales) -> np.ndarray:
    attachment = LsqAttachment(workload.model, scales)
    try:
        with torch.no_grad():
            return model_outputs(workload.model, workload.calibration).numpy()
    finally:
        attachment.detach()


def _scales(workload: Workload, policy):
    simulator = calibrated_simulator(workload)
    try:
        return calibrated_scales(simulator, policy)
    finally:
        simulator.detach()


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).mean())


def _run(model_bytes: bytes, workload: Workload, optimize: bool = True) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {"input": x.numpy()})[0] for x, _ in workload.calibration])


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("model", sorted(MODELS))
def test_every_layer_kind_exports_at_every_bit_width_and_agrees(workloads, model, bits, tmp_path):
    workload = workloads[model]
    # every bit-width on weights and on inputs: W b / A b on even layers, W b / A (10 - b) on odd ones
    policy = {name: (bits, bits if i % 2 == 0 else 10 - bits) for i, name in enumerate(workload.layers.names)}
    scales = _scales(workload, policy)
    path = tmp_path / "model.onnx"
    sidecar = export_onnx(workload.model, workload.example, scales, path, "calibrated")
    simulated = _simulated(workload, scales)
    # the graph computes what the simulation computes: onnxruntime without its optimizations, to float rounding
    unoptimized = _run(path.read_bytes(), workload, optimize=False)
    np.testing.assert_allclose(unoptimized, simulated, atol=1e-3 * np.abs(simulated).max())
    assert float((unoptimized.argmax(1) == simulated.argmax(1)).mean()) >= 0.99
    # onnxruntime's fused integer kernels re-round intermediate values (one 8-bit level here and there): on these
    # random models, whose logits are often near ties, that moves the outputs by a cosine of 0.997 or better
    outputs = _run(path.read_bytes(), workload)
    assert _cosine(outputs, simulated) >= 0.99
    graph = onnx.load(str(path)).graph
    assert not any(node.op_type == "BatchNormalization" for node in graph.node), "every BatchNorm is folded"
    for record in sidecar["layers"]:
        assert record["input"]["type"] == "uint8"
        assert record["input"]["clip"] == (None if record["a_bits"] == 8 else [0, 2 ** record["a_bits"] - 1])


def test_batchnorm_folding_keeps_the_integers_and_the_outputs(workloads):
    workload = workloads["convs"]
    policy = {name: (4, 6) for name in workload.layers.names}
    scales = _scales(workload, policy)
    model = workload.model
    weights = {name: dict(model.named_modules())[name].weight.detach().clone() for name in scales}
    with quantized_for_export(model, scales):
        traced = trace_onnx(model, workload.example)
    layers = replace_markers(traced, scales, weights)
    unfolded = version_converter.convert_version(copy.deepcopy(traced), OPSET)
    folded_names = fold_batchnorm(traced, layers)
    folded = version_converter.convert_version(traced, OPSET)
    assert sorted(folded_names) == ["dw", "grouped", "pw", "stem"]
    initializers = {init.name: numpy_helper.to_array(init) for init in folded.graph.initializer}
    for name in folded_names:
        bn = dict(model.named_modules())[f"{name}_bn"]
        sign = np.where(bn.weight.detach().numpy() < 0, -1, 1).reshape(-1, 1, 1, 1)
        simulator_integers = scales[name].weight.integers(weights[name]).numpy()
        np.testing.assert_array_equal(initializers[f"{name}.weight_quantized"], simulator_integers * sign)
        record = next(r for r in layers if r["name"] == name)
        assert record["weight"]["negated_channels"] == int((sign < 0).sum())
    before = _run(unfolded.SerializeToString(), workload, optimize=False)
    after = _run(folded.SerializeToString(), workload, optimize=False)
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5 * np.abs(before).max())
    np.testing.assert_allclose(before, _simulated(workload, scales), rtol=1e-5, atol=1e-5 * np.abs(before).max())


def test_kernels_are_read_from_onnxruntime_and_float_convolutions_get_float_weights(workloads, tmp_path):
    workload = workloads["convs"]
    policy = {name: (8, 8) for name in workload.layers.names}
    path = tmp_path / "model.onnx"
    sidecar = export_onnx(
        workload.model, workload.example, _scales(workload, policy), path, "calibrated", workload.calibration
    )
    check = ExportCheck(**sidecar["check"])
    assert check.layer_kinds == {
        "stem": "conv",
        "dw": "depthwise conv",
        "grouped": "grouped conv",
        "pw": "conv",
        "head": "linear",
    }
    # stem, dw, grouped feed the next layer's quantizer through a ReLU: onnxruntime fuses them
    for name in ("stem", "dw", "grouped"):
        assert check.layer_kernels[name] == "QLinearConv"
    # pw feeds a mean, not a quantizer: float32, with its weights stored dequantized, and the reason recorded
    assert check.layer_kernels["pw"] == FLOAT_WEIGHTS
    assert "ReduceMean" in check.float_reasons["pw"]
    record = next(r for r in sidecar["layers"] if r["name"] == "pw")
    assert record["weight"]["stored"] == FLOAT_WEIGHTS
    assert any(line.startswith("conv: ") for line in kernel_summary(check.layer_kernels, check.layer_kinds))
    why = why_not_faster(check.layer_kernels, check.layer_kinds, check.float_reasons)
    assert "pw (conv: its output feeds ReduceMean" in why


@pytest.mark.parametrize(("a_bits", "kernel"), [(32, "MatMulNBits"), (4, "MatMulIntegerToFloat")])
def test_4_bit_linears_get_an_integer_kernel_with_float_or_quantized_inputs(workloads, a_bits, kernel, tmp_path):
    """Weight-only 4 bits: the INT4 MatMulNBits layout; with quantized inputs: INT8 weights, MatMulIntegerToFloat
    (onnxruntime has no kernel for an int4 weight times a quantized input)."""
    workload = workloads["attention"]
    projections = [name for name in workload.layers.names if name.startswith("encoder.")]
    policy = {name: (4, a_bits) if name in projections else (8, 8) for name in workload.layers.names}
    path = tmp_path / "model.onnx"
    export_onnx(workload.model, workload.example, _scales(workload, policy), path, "calibrated")
    kernels = layer_kernels(optimized_graph(path.read_bytes()), projections)
    assert kernels == dict.fromkeys(projections, kernel)
