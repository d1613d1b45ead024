"""ONNX export (mpq_rl.deployment.export): a valid graph with the right Q/DQ per layer that onnxruntime runs like the
simulator."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, numpy_helper  # noqa: E402

from mpq_rl.cli import main  # noqa: E402
from mpq_rl.config import load_config  # noqa: E402
from mpq_rl.deployment.export import export_policy, sidecar_path  # noqa: E402
from mpq_rl.deployment.finetune import finetune  # noqa: E402
from mpq_rl.deployment.finetuned_weights import load_finetuned  # noqa: E402
from mpq_rl.deployment.kernels import FLOAT_WEIGHTS  # noqa: E402
from mpq_rl.quantization.policy import save_policy  # noqa: E402
from mpq_rl.quantization.qat import LsqAttachment  # noqa: E402
from mpq_rl.runs.assembly import load_workload  # noqa: E402
from mpq_rl.search.evaluator import calibrated_simulator  # noqa: E402
from mpq_rl.workloads.model_io import model_outputs  # noqa: E402
from mpq_rl.workloads.workload import Workload  # noqa: E402

MIXED = {
    "stem": (8, 8),
    "block.conv1": (2, 4),
    "block.conv2": (4, 2),
    "down": (3, 5),
    "dw": (5, 3),
    "pw": (6, 7),
    "down2": (4, 4),
    "fc": (7, 6),
    "classifier": (8, 8),
}
"""Every integer bit-width on some weight and some input, 2 and 4 bits included."""


pytestmark = pytest.mark.usefixtures("one_thread")


def stacked_inputs(workload: Workload) -> np.ndarray:
    return torch.cat([inputs for inputs, _ in workload.test]).numpy()


def run_onnx(path: Path, inputs: np.ndarray, optimize: bool = True) -> np.ndarray:
    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"input": inputs})[0]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Workload, Path, dict, torch.Tensor]:
    """The mixed policy exported with calibrated scales, and the simulator's test-split logits for it."""
    workload = load_workload(load_config())
    simulator = calibrated_simulator(workload)
    with simulator.applied(MIXED):
        simulated = model_outputs(workload.model, workload.test)
    simulator.detach()
    path = tmp_path_factory.mktemp("export") / "model.onnx"
    sidecar = export_policy(workload, MIXED, path)
    return workload, path, sidecar, simulated


def test_graph_passes_the_onnx_checker(exported):
    _, path, sidecar, _ = exported
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert {o.domain: o.version for o in model.opset_import}[""] == 21
    assert json.loads(sidecar_path(path).read_text()) == sidecar


def test_each_layer_has_qdq_with_the_types_and_ranges_of_its_bits(exported):
    _, path, sidecar, _ = exported
    graph = onnx.load(str(path)).graph
    inits = {i.name: i for i in graph.initializer}
    nodes = {n.name: n for n in graph.node}
    layers = {layer["name"]: layer for layer in sidecar["layers"]}
    for name, (w_bits, a_bits) in MIXED.items():
        q_w, q_a = 2 ** (w_bits - 1) - 1, 2**a_bits - 1
        record = layers[name]
        assert (record["w_bits"], record["a_bits"]) == (w_bits, a_bits)
        assert (record["weight"]["q_min"], record["weight"]["q_max"]) == (-q_w, q_w)
        assert f"{name}.weight" not in inits, "the float weight must be gone"
        if record["weight"].get("stored") != FLOAT_WEIGHTS:  # a convolution onnxruntime runs in float32
            weights = inits[f"{name}.weight_quantized"]
            assert weights.data_type == TensorProto.INT8
            levels = numpy_helper.to_array(weights).astype(np.int64)
            assert np.abs(levels).max() == q_w  # MSE clips at or inside each channel's largest weight
            assert not numpy_helper.to_array(inits[f"{name}.weight_zero_point"]).any()
            dequantize = nodes[f"{name}/weight_dequantize"]
            assert dequantize.op_type == "DequantizeLinear" and dequantize.attribute[0].i == 0

        zero_point = inits[f"{name}.input_zero_point"]
        assert zero_point.data_type == TensorProto.UINT8
        assert nodes[f"{name}/input_quantize"].op_type == "QuantizeLinear"
        assert nodes[f"{name}/input_dequantize"].op_type == "DequantizeLinear"
        assert (record["input"]["q_min"], record["input"]["q_max"]) == (0, q_a)
        assert int(numpy_helper.to_array(zero_point)) == record["input"]["zero_point"]
        if a_bits == 8:
            assert f"{name}/input_clip" not in nodes and record["input"]["clip"] is None
        else:  # the 8-bit integers clipped to the a_bits levels, between QuantizeLinear and DequantizeLinear
            clip = nodes[f"{name}/input_clip"]
            assert clip.op_type == "Clip" and clip.input[0] == f"{name}.input_quantized"
            assert int(numpy_helper.to_array(inits[f"{name}.input_clip_min"])) == 0
            assert int(numpy_helper.to_array(inits[f"{name}.input_clip_max"])) == q_a
            assert record["input"]["clip"] == [0, q_a]


def test_onnxruntime_matches_the_simulator_on_the_test_split(exported):
    workload, path, _, simulated = exported
    inputs = stacked_inputs(workload)
    outputs = run_onnx(path, inputs)
    agreement = float((outputs.argmax(1) == simulated.numpy().argmax(1)).mean())
    assert agreement >= 0.99
    # onnxruntime's fused integer kernels (QLinearConv, QGemm) round the requantized output on their own, so an
    # input quantized to 2 or 3 bits can land one level apart (a sizeable step): the logits stay close in direction
    reference = simulated.numpy()
    cosine = (outputs * reference).sum(1) / (np.linalg.norm(outputs, axis=1) * np.linalg.norm(reference, axis=1))
    assert cosine.mean() >= 0.99
    exact = run_onnx(path, inputs, optimize=False)
    assert np.abs(exact - simulated.numpy()).max() < 1e-4  # the graph itself computes what the simulator does


@pytest.fixture(scope="module")
def finetuned_dir(tmp_path_factory) -> Path:
    """An ``evaluate --finetune-epochs 1`` output folder for the mixed policy."""
    folder = tmp_path_factory.mktemp("finetuned")
    finetune(load_workload(load_config()), MIXED, epochs=1, seed=0).save(folder)
    return folder


def test_finetuned_weights_export_with_their_learned_scales(finetuned_dir, tmp_path, capsys):
    workload = load_workload(load_config())
    save_policy(tmp_path / "policy.json", MIXED)
    argv = ["export", "--policy", str(tmp_path / "policy.json"), "--weights", str(finetuned_dir)]
    assert main([*argv, "--output", str(tmp_path / "model.onnx")]) == 0
    assert "learned scales" in capsys.readouterr().out
    sidecar = json.loads((tmp_path / "model.onnx.json").read_text())
    assert sidecar["scales"] == "learned"

    model = load_workload(load_config()).model
    learned = load_finetuned(model, finetuned_dir)
    attachment = LsqAttachment(model, learned)  # eval mode: the simulator's kernels with the learned scales
    expected = model_outputs(model, workload.test).numpy()
    attachment.detach()
    outputs = run_onnx(tmp_path / "model.onnx", stacked_inputs(workload), optimize=False)
    differences = np.abs(outputs - expected)
    assert differences.max() < 0.05  # a value on a rounding boundary may land one integer step apart
    assert (differences.max(axis=1) < 1e-4).mean() >= 0.99
    assert sidecar["layers"][1]["input"]["scale"] == pytest.approx(learned["block.conv1"].input.scale)


def test_weights_finetuned_for_other_bits_are_refused(finetuned_dir, tmp_path, capsys):
    save_policy(tmp_path / "policy.json", {**MIXED, "dw": (2, 2)})
    argv = ["export", "--policy", str(tmp_path / "policy.json"), "--weights", str(finetuned_dir)]
    assert main([*argv, "--output", str(tmp_path / "model.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'dw'" in err


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ({**MIXED, "head": (8, 8)}, "'head'"),
        ({k: v for k, v in MIXED.items() if k != "down2"}, "'down2'"),
        ({**MIXED, "fc": (1, 8)}, "'fc'"),
        ({**MIXED, "pw": (8, 64)}, "'pw'"),
    ],
)
def test_export_rejects_a_bad_policy_in_one_line(tmp_path, capsys, policy, message):
    save_policy(tmp_path / "policy.json", policy)
    argv = ["export", "--policy", str(tmp_path / "policy.json"), "--output", str(tmp_path / "model.onnx")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err
    assert not (tmp_path / "model.onnx").exists()


def test_missing_weights_are_a_user_error(tmp_path, capsys):
    save_policy(tmp_path / "policy.json", MIXED)
    argv = ["export", "--policy", str(tmp_path / "policy.json"), "--weights", str(tmp_path / "nowhere")]
    assert main([*argv, "--output", str(tmp_path / "model.onnx")]) == 2
    assert "does not exist" in capsys.readouterr().err
