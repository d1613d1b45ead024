"""LSQ quantizers and quantization-aware finetuning on the digits workload (mpq_rl.quantization.qat,
mpq_rl.deployment.finetune)."""

from __future__ import annotations

import contextlib
import io
import json
import math

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from mpq_rl.cli import main
from mpq_rl.config import load_config
from mpq_rl.deployment.export import export_policy
from mpq_rl.deployment.finetune import FinetuneResult, finetune
from mpq_rl.deployment.finetuned_weights import SCALES_FILE, WEIGHTS_FILE, load_finetuned
from mpq_rl.quantization import formats
from mpq_rl.quantization.policy import save_policy
from mpq_rl.quantization.qat import LsqAttachment, LsqQuantizer, calibrated_scales, load_scales
from mpq_rl.quantization.quant import QuantParams
from mpq_rl.runs.assembly import load_workload
from mpq_rl.search.evaluator import calibrated_simulator
from mpq_rl.workloads.model_io import model_outputs
from mpq_rl.workloads.workload import Workload

EDGE_LAYERS = ("stem", "classifier")
"""Kept at W8A8 by :func:`aggressive_policy`, which puts every other layer at W2A4 (digits top-1 drops 7-25 points)."""


pytestmark = pytest.mark.usefixtures("one_thread")


def fresh_workload() -> Workload:
    return load_workload(load_config())


def aggressive_policy(workload: Workload) -> dict[str, tuple[int, int]]:
    return {name: (8, 8) if name in EDGE_LAYERS else (2, 4) for name in workload.layers.names}


def mixed_format_policy(workload: Workload) -> dict[str, tuple[int, int]]:
    """fp, flint and integers at 3 bits on the inner layers (mixed within layers too), W8A8 at the edges."""
    fp3, flint3 = formats.precision_code("fp", 3), formats.precision_code("flint", 3)
    inner = [name for name in workload.layers.names if name not in EDGE_LAYERS]
    pairs = [(fp3, flint3), (flint3, 3), (3, fp3), (flint3, flint3)]
    return {
        name: (8, 8) if name in EDGE_LAYERS else pairs[inner.index(name) % len(pairs)] for name in workload.layers.names
    }


@pytest.fixture(scope="module")
def finetuned() -> tuple[Workload, FinetuneResult, dict[str, torch.Tensor], list[bool]]:
    """One 2-epoch finetune of the aggressive policy, with the FP32 state before it and BN modes seen in training."""
    workload = fresh_workload()
    before = {k: v.clone() for k, v in workload.model.state_dict().items()}
    bn_modes: list[bool] = []
    handle = workload.model.block.bn1.register_forward_hook(lambda m, i, o: bn_modes.append(m.training))
    with contextlib.redirect_stderr(io.StringIO()) as progress:
        result = finetune(workload, aggressive_policy(workload), epochs=2, seed=0, progress=True)
    handle.remove()
    result.progress = progress.getvalue().splitlines()
    return workload, result, before, bn_modes


def test_finetuning_reports_each_epoch(finetuned):
    _, result, _, _ = finetuned
    done = [line for line in result.progress if " done, " in line]
    assert [line.split(",")[0] for line in done] == ["finetune: epoch 1/2 done", "finetune: epoch 2/2 done"]
    assert [float(line.split("mean loss ")[1].split(",")[0]) for line in done] == pytest.approx(result.losses, abs=1e-4)


# --- LSQ quantizer -----------------------------------------------------------------------------------------------


def test_lsq_step_size_gets_the_lsq_gradient_and_values_pass_straight_through():
    quantizer = LsqQuantizer(QuantParams(0.5, zero_point=1, q_min=0, q_max=3)).train()
    x = torch.tensor([[-2.0, -0.2, 0.3, 0.55, 4.0]], requires_grad=True)
    out = quantizer(x)
    assert out.tolist() == [[-0.5, 0.0, 0.5, 0.5, 1.0]]
    out.sum().backward()
    # STE: gradient 1 inside the range [(0 - 1) * 0.5, (3 - 1) * 0.5], 0 where clipped.
    assert x.grad.tolist() == [[0.0, 1.0, 1.0, 1.0, 0.0]]
    # LSQ (Esser et al. 2020, eq. 3): round(x/s) - x/s inside, q_min - z / q_max - z outside, times g.
    v = x.detach()[0] / 0.5
    inside = [float(torch.round(v[i]) - v[i]) for i in (1, 2, 3)]
    expected = (-1.0 + sum(inside) + 2.0) / math.sqrt(5 * 3)
    assert quantizer.scale.grad.item() == pytest.approx(expected, rel=1e-5)


def test_lsq_on_a_value_table_gets_the_generalised_gradient():
    code = formats.precision_code("fp", 4)  # E2M1: +-{0, 0.5, 1, 1.5, 2, 3, 4, 6}
    quantizer = LsqQuantizer(formats.TableQuantizer(0.5, formats.value_table(code, True), code)).train()
    x = torch.tensor([[-4.0, 0.3, 1.1, 2.2, 5.0]], requires_grad=True)
    out = quantizer(x)
    assert out.tolist() == [[-3.0, 0.25, 1.0, 2.0, 3.0]]  # nearest of the table times 0.5, the ends clipped
    out.sum().backward()
    assert x.grad.tolist() == [[0.0, 1.0, 1.0, 1.0, 0.0]]
    # T(v) - v inside, the clipped end T(v) outside, times g = 1 / sqrt(numel * largest table value).
    v = x.detach()[0] / 0.5
    inside = [float(t - v[i]) for i, t in ((1, 0.5), (2, 2.0), (3, 4.0))]
    expected = (-6.0 + sum(inside) + 6.0) / math.sqrt(5 * 6)
    assert quantizer.scale.grad.item() == pytest.approx(expected, rel=1e-5)


def test_per_channel_weight_quantizer_learns_one_step_per_output_channel():
    weight = torch.randn(4, 3, 3, 3, requires_grad=True)
    quantizer = LsqQuantizer(QuantParams(torch.full((4,), 0.3), 0, -1, 1, axis=0)).train()
    out = quantizer(weight)
    assert set(torch.unique(out[0] / 0.3).round().tolist()) <= {-1.0, 0.0, 1.0}
    out.pow(2).sum().backward()
    assert quantizer.scale.grad.shape == (4,)
    assert bool((quantizer.scale.grad != 0).all())


@pytest.mark.parametrize("make_policy", [aggressive_policy, mixed_format_policy], ids=["int", "mixed-formats"])
def test_lsq_in_eval_mode_reproduces_the_simulator_exactly(make_policy):
    workload = fresh_workload()
    policy = make_policy(workload)
    simulator = calibrated_simulator(workload)
    with simulator.applied(policy):
        simulated = model_outputs(workload.model, workload.test)
    scales = calibrated_scales(simulator, policy)
    simulator.detach()
    attachment = LsqAttachment(workload.model, scales)
    try:
        assert torch.equal(model_outputs(workload.model, workload.test), simulated)
    finally:
        attachment.detach()
    assert not hasattr(workload.model.stem, "parametrizations")


# --- finetuning ----------------------------------------------------------------------------------------------------


def test_finetuning_an_aggressive_policy_recovers_held_out_accuracy(finetuned):
    _, result, _, _ = finetuned
    assert result.fp32["top1"] > 0.95
    assert result.before["top1"] < result.fp32["top1"] - 0.05
    assert result.after["top1"] > result.before["top1"] + 0.04
    assert result.after["top1"] > result.fp32["top1"] - 0.03
    assert len(result.losses) == 2 and result.losses[1] < result.losses[0]


def test_finetuning_a_mixed_format_policy_holds_held_out_accuracy_and_exports(tmp_path):
    workload = fresh_workload()
    policy = mixed_format_policy(workload)
    result = finetune(workload, policy, epochs=2, seed=0)
    # The guarantee is on validation: the kept epoch scores at least the start there. On the test split this policy
    # measured 0.9849 -> 0.9773 with the distillation recipe (validation is saturated at 100% on digits, so the
    # epoch is chosen by validation loss; docs/results-finetune.md): within a point, not a gain.
    assert result.before["top1"] < result.fp32["top1"]
    assert result.validation_kept.top1 >= result.validation[0].top1
    assert result.after["top1"] >= result.before["top1"] - 0.01
    assert result.losses[1] < result.losses[0]
    learned = result.scales["block.conv1"]
    assert isinstance(learned.weight, formats.TableQuantizer) and isinstance(learned.input, formats.TableQuantizer)
    assert learned.weight.scale.shape == (workload.model.block.conv1.out_channels,)
    result.save(tmp_path / "finetuned")
    reloaded = load_scales(tmp_path / "finetuned" / SCALES_FILE)["block.conv1"]
    assert torch.equal(reloaded.weight.scale, learned.weight.scale) and reloaded.input.scale == learned.input.scale
    assert torch.equal(reloaded.input.table, learned.input.table) and reloaded.input.code == learned.input.code
    sidecar = export_policy(fresh_workload(), policy, tmp_path / "model.onnx", weights=tmp_path / "finetuned")
    assert sidecar["scales"] == "learned" and sidecar["check"]["agreement"] >= 0.99
    record = next(r for r in sidecar["layers"] if r["name"] == "block.conv1")
    assert record["weight"]["format"] == "fp" and record["input"]["format"] == "flint"
    assert record["weight"]["scale"] == pytest.approx(learned.weight.scale.tolist())
    assert record["input"]["scale"] == pytest.approx(learned.input.scale)


def test_batchnorm_statistics_stay_frozen_while_its_affine_parameters_learn(finetuned):
    workload, result, before, bn_modes = finetuned
    assert bn_modes and not any(bn_modes), "BatchNorm must run in eval mode during finetuning"
    for key in ("block.bn1.running_mean", "block.bn1.running_var", "pw_bn.running_var", "pw_bn.num_batches_tracked"):
        assert torch.equal(result.state_dict[key], before[key])
    assert not torch.equal(result.state_dict["block.bn1.weight"], before["block.bn1.weight"])
    assert not torch.equal(result.state_dict["block.conv1.weight"], before["block.conv1.weight"])
    assert set(result.state_dict) == set(before), "no quantizer state may leak into the model's state dict"
    assert not workload.model.training


def test_saved_weights_reload_bit_identically_without_pickle(finetuned, tmp_path):
    workload, result, _, _ = finetuned
    result.save(tmp_path)
    tensors = load_file(str(tmp_path / WEIGHTS_FILE))  # safetensors: tensors only, no pickled objects
    assert set(tensors) == set(result.state_dict)
    assert all(torch.equal(tensors[k], v) for k, v in result.state_dict.items())
    model = fresh_workload().model
    learned = load_finetuned(model, tmp_path)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in result.state_dict.items())
    assert learned is not None and set(learned) == set(result.scales)
    assert torch.equal(learned["dw"].weight.scale, result.scales["dw"].weight.scale)
    assert learned["dw"].input.scale == result.scales["dw"].input.scale
    with safe_open(str(tmp_path / SCALES_FILE), framework="pt") as handle:
        assert json.loads(handle.metadata()["bits"])["dw"] == [2, 4]
    assert load_scales(tmp_path / SCALES_FILE)["stem"].w_bits == 8
    report = json.loads((tmp_path / "evaluation.json").read_text())
    assert report["test"]["after"]["top1"] == result.after["top1"]
    assert report["finetune"]["epochs"] == 2


def test_a_plain_state_dict_also_loads(finetuned, tmp_path):
    _, result, _, _ = finetuned
    torch.save(result.state_dict, tmp_path / "weights.pt")
    model = fresh_workload().model
    assert load_finetuned(model, tmp_path / "weights.pt") is None
    assert torch.equal(model.state_dict()["dw.weight"], result.state_dict["dw.weight"])


def test_attaching_lsq_to_a_simulated_model_is_refused():
    workload = fresh_workload()
    simulator = calibrated_simulator(workload)
    scales = calibrated_scales(simulator, aggressive_policy(workload))
    with pytest.raises(Exception, match="already"):
        LsqAttachment(workload.model, scales)
    simulator.detach()


def test_finetune_needs_a_labelled_train_split():
    workload = fresh_workload()
    workload.train = None
    with pytest.raises(Exception, match="train split"):
        finetune(workload, aggressive_policy(workload), epochs=1)


# --- CLI -----------------------------------------------------------------------------------------------------------


def test_evaluate_command_scores_a_policy(tmp_path, capsys):
    workload = fresh_workload()
    save_policy(tmp_path / "policy.json", aggressive_policy(workload))
    assert main(["evaluate", "--policy", str(tmp_path / "policy.json"), "--output", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "fp32" in printed and "policy (simulated)" in printed
    report = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    assert report["test"]["after"] is None and report["files"] == {}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p: p.update({"nonexistent": (8, 8)}), "'nonexistent'"),
        (lambda p: p.pop("pw"), "'pw'"),
        (lambda p: p.update({"dw": (9, 8)}), "'dw'"),
        (lambda p: p.update({"fc": (4, 1)}), "'fc'"),
    ],
)
def test_evaluate_rejects_a_bad_policy_in_one_line(tmp_path, capsys, change, message):
    policy = aggressive_policy(fresh_workload())
    change(policy)
    save_policy(tmp_path / "policy.json", policy)
    assert main(["evaluate", "--policy", str(tmp_path / "policy.json"), "--finetune-epochs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err


def test_finetuning_is_seeded(finetuned):
    _, result, _, _ = finetuned
    again = finetune(fresh_workload(), result.policy, epochs=1, seed=0)
    once = finetune(fresh_workload(), result.policy, epochs=1, seed=0)
    assert again.losses == once.losses
    assert all(torch.equal(again.state_dict[k], once.state_dict[k]) for k in once.state_dict)


def test_models_are_left_without_hooks(finetuned):
    workload, _, _, _ = finetuned
    for module in workload.model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            assert not module._forward_pre_hooks
