"""Attention layers end to end (mpq_rl.workloads.attention, mpq_rl.workloads.coverage): models built from torch's own
``nn.TransformerEncoderLayer`` and a bare ``nn.MultiheadAttention`` are covered whole, simulated, finetuned and
exported."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from mpq_rl.config import RunConfig
from mpq_rl.deployment.finetune import finetune
from mpq_rl.errors import UserError
from mpq_rl.runs.assembly import assemble_workload, build_problem
from mpq_rl.search.evaluator import calibrated_simulator
from mpq_rl.workloads.attention import route
from mpq_rl.workloads.layers import discover_layers
from mpq_rl.workloads.model_io import model_outputs
from mpq_rl.workloads.workload import Workload

pytestmark = pytest.mark.usefixtures("one_thread")

WIDTH, HEADS, TOKENS, CLASSES = 16, 2, 6, 4


class EncoderClassifier(nn.Module):
    """Tokens -> one ``nn.TransformerEncoderLayer`` -> mean over tokens -> linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.TransformerEncoderLayer(WIDTH, HEADS, 2 * WIDTH, dropout=0.0, batch_first=True)
        self.head = nn.Linear(WIDTH, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x).mean(dim=1))


class BareAttention(nn.Module):
    """A bare ``nn.MultiheadAttention`` (sequence first, torch's default) whose mean output is an embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(WIDTH, HEADS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.transpose(0, 1)
        return self.attention(tokens, tokens, tokens, need_weights=False)[0].mean(dim=0)


def workload_of(build: type[nn.Module], labelled: bool, samples: int = 96) -> Workload:
    """A seeded model on random tokens; labels (when asked) are the FP32 model's own predictions."""
    torch.manual_seed(0)
    model = build().eval()
    inputs = torch.randn(samples, TOKENS, WIDTH)
    if labelled:
        with torch.no_grad():
            labels = model(inputs).argmax(dim=1)
        split = TensorDataset(inputs, labels)
    else:
        split = TensorDataset(inputs)
    return assemble_workload(config_of(labelled, samples), model, {"calibration": split, "test": split, "train": split})


def config_of(labelled: bool, samples: int = 96) -> RunConfig:
    """The run configuration of :func:`workload_of`'s workloads."""
    return RunConfig.model_validate(
        {
            "data": {"batch_size": 32, "calibration_samples": samples},
            "proxy": {"metric": "top1" if labelled else "fidelity"},
            "budget": 1.0,
        }
    )


def test_routed_attention_computes_what_torch_computes():
    torch.manual_seed(0)
    x, other = torch.randn(3, 5, WIDTH), torch.randn(3, 7, WIDTH)
    padding = torch.zeros(3, 5, dtype=torch.bool)
    padding[:, -2:] = True
    causal = torch.triu(torch.ones(5, 5, dtype=torch.bool), 1)
    cases = [
        ({"batch_first": True}, (x, x, x), {}),
        ({"batch_first": True}, (x, x, x), {"key_padding_mask": padding, "need_weights": False}),
        ({"batch_first": True}, (x, x, x), {"attn_mask": causal, "average_attn_weights": False}),
        ({"batch_first": True}, (x, other, other), {}),
        ({}, (x.transpose(0, 1),) * 3, {"attn_mask": causal, "need_weights": False}),
        ({"kdim": 3, "vdim": 5, "batch_first": True}, (x, torch.randn(3, 7, 3), torch.randn(3, 7, 5)), {}),
        ({}, (x[0], other[0], other[0]), {}),
    ]
    for options, inputs, call in cases:
        attention = nn.MultiheadAttention(WIDTH, HEADS, **options).eval()
        reference = copy.deepcopy(attention)
        route(attention)
        with torch.no_grad():
            expected, routed = reference(*inputs, **call), attention(*inputs, **call)
        torch.testing.assert_close(routed[0], expected[0], atol=1e-6, rtol=1e-5)
        if expected[1] is None:
            assert routed[1] is None
        else:
            torch.testing.assert_close(routed[1], expected[1], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("model", [EncoderClassifier, BareAttention])
def test_attention_models_are_covered_whole(model):
    table = discover_layers(model(), torch.randn(2, TOKENS, WIDTH))
    assert table.coverage == 1.0 and not table.not_covered
    projections = [name for name in table.names if name.endswith(("in_proj", "out_proj"))]
    assert len(projections) == 2
    in_proj = table[projections[0]]
    assert in_proj.weight_shape == (3 * WIDTH, WIDTH) and in_proj.macs == TOKENS * 3 * WIDTH * WIDTH
    assert in_proj.params == 3 * WIDTH * WIDTH + 3 * WIDTH
    assert table[projections[1]].macs == TOKENS * WIDTH * WIDTH


class WithFunctionalWeight(EncoderClassifier):
    """An extra weight used through ``F.linear`` (not covered) and a positional embedding (added: no weight)."""

    def __init__(self) -> None:
        super().__init__()
        self.extra = nn.Parameter(torch.randn(CLASSES, WIDTH))
        self.position = nn.Parameter(torch.randn(1, TOKENS, WIDTH))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(x + self.position).mean(dim=1)
        return self.head(hidden) + nn.functional.linear(hidden, self.extra)


class SharedLinear(nn.Module):
    """One ``nn.Linear`` applied twice, on 3-D inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Linear(WIDTH, WIDTH)
        self.head = nn.Linear(WIDTH, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.shared(torch.relu(self.shared(x))).mean(dim=1))


def test_weights_used_through_functional_calls_are_named_and_counted():
    table = discover_layers(WithFunctionalWeight(), torch.randn(2, TOKENS, WIDTH))
    covered = 4 * WIDTH * WIDTH + 2 * (2 * WIDTH * WIDTH) + CLASSES * WIDTH
    assert table.not_covered == {"extra": CLASSES * WIDTH}
    assert table.coverage == pytest.approx(covered / (covered + CLASSES * WIDTH))
    assert "extra (64)" in table.coverage_line()


def test_a_search_warns_when_weights_are_left_out(capsys):
    problem = build_problem(config_of(labelled=True), workload=workload_of(WithFunctionalWeight, labelled=True))
    problem.close()
    err = capsys.readouterr().err
    assert "warning: the search leaves weights out" in err and "not covered (FP32, not costed): extra" in err


@pytest.mark.parametrize(("model", "labelled"), [(EncoderClassifier, True), (BareAttention, False)])
def test_bits_on_each_attention_projection_change_the_output(model, labelled):
    workload = workload_of(model, labelled)
    simulator = calibrated_simulator(workload)
    fp32 = model_outputs(workload.model, workload.calibration)
    for name in (n for n in workload.layers.names if n.endswith(("in_proj", "out_proj"))):
        for bits in ((2, 32), (32, 2)):
            with simulator.applied({name: bits}):
                changed = model_outputs(workload.model, workload.calibration)
            assert (changed - fp32).abs().max() > 1e-3, (name, bits)
    simulator.detach()
    torch.testing.assert_close(model_outputs(workload.model, workload.calibration), fp32, atol=0, rtol=0)


def test_qat_finetunes_the_attention_projections():
    workload = workload_of(EncoderClassifier, labelled=True)
    attention = workload.model.encoder.self_attn
    before = {"in": attention.in_proj_weight.detach().clone(), "out": attention.out_proj.weight.detach().clone()}
    policy = {name: (3, 4) for name in workload.layers.names}
    result = finetune(workload, policy, epochs=2, seed=0)
    assert not torch.equal(result.state_dict["encoder.self_attn.in_proj_weight"], before["in"])
    assert not torch.equal(result.state_dict["encoder.self_attn.out_proj.weight"], before["out"])
    initial = finetune(workload_of(EncoderClassifier, labelled=True), policy, epochs=0).before
    assert initial == result.before
    learned = result.scales["encoder.self_attn.in_proj"]
    assert learned.weight.scale.shape == (3 * WIDTH,) and learned.input is not None


@pytest.fixture(scope="module")
def onnx_runtime():
    pytest.importorskip("onnx")
    return pytest.importorskip("onnxruntime")


@pytest.mark.parametrize(("model", "labelled"), [(EncoderClassifier, True), (BareAttention, False)])
def test_attention_models_export_and_run_in_onnxruntime(onnx_runtime, tmp_path, model, labelled):
    from mpq_rl.deployment.export import export_policy

    workload = workload_of(model, labelled)
    names = workload.layers.names
    w8a8 = export_policy(workload, {name: (8, 8) for name in names}, tmp_path / "w8a8.onnx")
    assert w8a8["check"]["agreement"] >= 0.99
    assert w8a8["check"]["measure"] == ("top-1 agreement" if labelled else "cosine")
    mixed_policy = {name: [(4, 8), (6, 5), (8, 4), (3, 6)][i % 4] for i, name in enumerate(names)}
    mixed = export_policy(workload, mixed_policy, tmp_path / "mixed.onnx", min_agreement=0.0)
    assert [(layer["name"], layer["w_bits"], layer["a_bits"]) for layer in mixed["layers"]] == [
        (name, *bits) for name, bits in mixed_policy.items()
    ]
    assert 0.0 < mixed["check"]["agreement"] <= 1.0 + 1e-6
    assert mixed["check"]["size_bytes"] == (tmp_path / "mixed.onnx").stat().st_size
    session = onnx_runtime.InferenceSession(str(tmp_path / "mixed.onnx"), providers=["CPUExecutionProvider"])
    ops = {node.op_type for node in __import__("onnx").load(str(tmp_path / "mixed.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    inputs = torch.cat([x for x, _ in workload.calibration]).numpy()
    assert np.isfinite(session.run(None, {"input": inputs})[0]).all()


def test_a_module_called_twice_exports_one_weight_and_an_input_quantizer_per_call(onnx_runtime, tmp_path):
    import onnx

    from mpq_rl.deployment.export import export_policy

    workload = workload_of(SharedLinear, labelled=True)
    assert workload.layers["shared"].calls == 2
    sidecar = export_policy(workload, {"shared": (4, 8), "head": (8, 8)}, tmp_path / "model.onnx")
    assert sidecar["check"]["agreement"] >= 0.99
    nodes = [node.name for node in onnx.load(str(tmp_path / "model.onnx")).graph.node]
    assert nodes.count("shared/weight_dequantize") == 1
    assert "shared/input_quantize" in nodes and "shared:1/input_quantize" in nodes


def test_an_export_that_strays_from_the_simulation_fails_loudly(onnx_runtime, tmp_path):
    from mpq_rl.deployment.export import export_policy

    workload = workload_of(BareAttention, labelled=False)
    policy = {name: (2, 2) for name in workload.layers.names}
    with pytest.raises(UserError, match="does not compute what the simulation computes"):
        export_policy(workload, policy, tmp_path / "model.onnx", min_agreement=1.01)
