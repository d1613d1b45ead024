"""Number formats: value tables against hand-computed values, fake quantization, policies, costs, environment, CLI."""

import dataclasses
import json

import gymnasium as gym
import numpy as np
import pytest
import torch

from mpq_rl.agents import build_searcher
from mpq_rl.cli import main
from mpq_rl.config import HardwareConfig, load_config, parse_config
from mpq_rl.deployment.export import export_policy
from mpq_rl.envs import BitWidthEnv
from mpq_rl.errors import UserError
from mpq_rl.hardware import build_cost_table
from mpq_rl.quantization import formats
from mpq_rl.quantization.policy import load_policy, save_policy
from mpq_rl.quantization.quant import ActivationSample
from mpq_rl.runs.assembly import build_problem, load_workload
from mpq_rl.search.evaluator import calibrated_simulator
from mpq_rl.search.searcher import SearchContext
from mpq_rl.workloads.model_io import model_outputs

FP, FLINT = formats.precision_code("fp", 0), formats.precision_code("flint", 0)


def signed(*magnitudes: float) -> list[float]:
    return sorted({*magnitudes, *(-m for m in magnitudes)})


@pytest.mark.parametrize(
    ("code", "is_signed", "expected"),
    [
        # OCP FP4 E2M1: subnormals 0, 0.5; then 1, 1.5, 2, 3, 4, 6.
        (FP + 4, True, signed(0, 0.5, 1, 1.5, 2, 3, 4, 6)),
        # E2M0 (bias 1): 0 (subnormal), 1, 2, 4.
        (FP + 3, True, signed(0, 1, 2, 4)),
        # Unsigned 4 bits, E2M2: subnormals 0..0.75 in quarters, then 1..7 with 4 steps per octave.
        (FP + 4, False, [0, 0.25, 0.5, 0.75, 1, 1.25, 1.5, 1.75, 2, 2.5, 3, 3.5, 4, 5, 6, 7]),
        # flint, 3 magnitude bits: exponents -2 (1 value), -1 (2), 0 (2), 1 (1), then the top 2^2.
        (FLINT + 4, True, signed(0, 0.25, 0.5, 0.75, 1, 1.5, 2, 4)),
        (FLINT + 3, True, signed(0, 0.5, 1, 2)),
        # flint, 4 magnitude bits (ANT's unsigned 4-bit flint).
        (FLINT + 4, False, [0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1, 1.25, 1.5, 1.75, 2, 3, 4, 8]),
    ],
)
def test_value_tables_match_hand_computed_values(code, is_signed, expected):
    assert formats.value_table(code, is_signed).tolist() == expected


def test_table_sizes_and_fp8_e4m3_extremes():
    for bits in range(3, 9):
        for base in (FP, FLINT):
            # Sign-magnitude: +0 and -0 are one value, so 2^b - 1 signed values and 2^b unsigned ones.
            assert len(formats.value_table(base + bits, True)) == 2**bits - 1
            assert len(formats.value_table(base + bits, False)) == 2**bits
    e4m3 = formats.value_table(FP + 8, True)
    assert e4m3[-1] == 480.0  # 2^(15 - 7) * (1 + 7/8), every exponent code finite
    assert e4m3[e4m3 > 0][0] == 2.0**-9  # smallest subnormal 2^(1 - 7) / 2^3
    assert formats.MiniFloat().split(7) == (4, 3)


def test_codes_and_candidates():
    assert formats.candidate_codes(["int"], [2, 4, 8, 32]) == [2, 4, 8, 32]
    assert formats.candidate_codes(["int", "fp", "flint"], [2, 4]) == [2, 4, FP + 4, FLINT + 4]
    assert [formats.label(c) for c in (4, FP + 6, FLINT + 3)] == ["4", "fp6", "flint3"]
    assert formats.Precision.of(FP + 4) == formats.Precision("fp", 4) and formats.Precision("fp", 4).code == FP + 4
    assert [str(formats.Precision.of(c)) for c in (8, FLINT + 6)] == ["8", "flint6"]
    grouped = formats.by_format([FLINT + 4, 8, FP + 4, 2])
    assert [(f.name, codes) for f, codes in grouped] == [("int", [8, 2]), ("fp", [FP + 4]), ("flint", [FLINT + 4])]
    with pytest.raises(UserError, match="fp has no 2-bit form"):
        formats.check_code(FP + 2, "here")


def relative_error(name: str, bits: int, weight: torch.Tensor) -> float:
    quantized = formats.FORMATS[name].weight_quantizers(weight, [bits])[0].values(weight)
    return float((quantized - weight).pow(2).sum() / weight.pow(2).sum())


@pytest.mark.parametrize("name", formats.FORMAT_NAMES)
def test_weight_error_falls_with_bits(name):
    weight = torch.randn(16, 64, generator=torch.Generator().manual_seed(0))
    # fp8 (E4M3) adds an exponent bit to fp7 (E3M3), which a per-channel scale does not need.
    top = 7 if name == "fp" else 8
    errors = [relative_error(name, bits, weight) for bits in range(formats.FORMATS[name].min_bits, top + 1)]
    assert all(b < a for a, b in zip(errors, errors[1:], strict=False)), errors
    assert errors[-1] < errors[0] / 30
    assert name != "fp" or relative_error("fp", 8, weight) <= errors[-1] * 1.1


def test_fake_quantization_rounds_to_nearest_and_passes_gradients_straight_through():
    table = formats.value_table(FP + 4, True)
    x = torch.tensor([0.2, 0.3, 2.4, 2.6, 5.2, 9.0, -7.0], requires_grad=True)
    y = formats.fake_quantize(x, 1.0, table)
    assert y.tolist() == [0.0, 0.5, 2.0, 3.0, 6.0, 6.0, -6.0]
    y.sum().backward()
    assert x.grad.tolist() == [1, 1, 1, 1, 1, 0, 0]  # zero where clipped to the table's ends


def test_activation_quantizer_is_unsigned_for_non_negative_inputs():
    sample = torch.rand(1000, generator=torch.Generator().manual_seed(0)) * 3
    flint = formats.FORMATS["flint"]
    quantizer, six = flint.activation_quantizers(ActivationSample(sample, 0.0, 3.0), [4, 6])
    assert quantizer.table.min() == 0 and len(quantizer.table) == 16 and len(six.table) == 64
    assert six.code == FLINT + 6
    assert flint.activation_quantizers(ActivationSample(sample - 1, -1.0, 2.0), [4])[0].table.min() < 0


def test_policy_files_carry_formats_and_old_files_mean_integers(tmp_path):
    path = tmp_path / "policy.json"
    save_policy(path, {"a": (FP + 4, 8), "b": (4, FLINT + 6)})
    layers = json.loads(path.read_text())["layers"]
    assert layers[0] == {"name": "a", "w_bits": 4, "a_bits": 8, "w_format": "fp", "a_format": "int"}
    assert load_policy(path) == {"a": (FP + 4, 8), "b": (4, FLINT + 6)}
    save_policy(path, {"a": (4, 8)})
    assert "w_format" not in path.read_text() and load_policy(path) == {"a": (4, 8)}
    for bad, message in (({"w_format": "posit"}, "choose one of"), ({"w_format": "fp", "w_bits": 2}, "no 2-bit")):
        path.write_text(
            json.dumps({"format": "mpq_rl.policy/1", "layers": [{"name": "a", "w_bits": 4, "a_bits": 8} | bad]})
        )
        with pytest.raises(UserError, match=message):
            load_policy(path)


def test_config_formats_are_validated():
    assert parse_config({}).quantization.formats == ["int"]
    with pytest.raises(UserError, match="quantization.formats"):
        parse_config({"quantization": {"formats": ["int", "int"]}})
    with pytest.raises(UserError, match="quantization.formats"):
        parse_config({"quantization": {"formats": ["posit"]}})


def test_flexible_preset_prices_decoders_and_integer_presets_refuse_formats(digits_workload):
    layers = digits_workload.layers
    everything = ["int", "fp", "flint"]
    flexible = build_cost_table(layers, HardwareConfig(preset="flexible"), formats=everything)
    fusion = build_cost_table(layers, HardwareConfig(preset="bitfusion"))
    names = layers.names
    int4 = {n: (4, 4) for n in names}
    fp4 = {n: (FP + 4, FP + 4) for n in names}
    # Same array and cycles as Bit Fusion, times the decoders' area (1 + 0.03 + 0.03) where compute-bound.
    compute_bound = ~fusion.memory_bound(int4)
    ratio = flexible.per_layer(int4, "latency") / fusion.per_layer(int4, "latency")
    assert np.allclose(ratio[compute_bound], 1.06)
    assert np.allclose(flexible.per_layer(fp4, "latency"), flexible.per_layer(int4, "latency"))
    assert (flexible.per_layer(fp4, "energy") > flexible.per_layer(int4, "energy")).all()
    assert flexible.total(fp4, "size") == flexible.total(int4, "size")
    assert build_cost_table(layers, HardwareConfig(preset="bops"), formats=everything).total(fp4, "bops") > 0
    with pytest.raises(UserError, match="runs integers only"):
        build_cost_table(layers, HardwareConfig(preset="t4"), formats=everything)


@pytest.fixture(scope="module")
def formats_problem(digits_workload, digits_evaluator):
    """Two searched layers, weights at 4/8 bits and activations at 8, in three formats on the flexible accelerator."""
    config = parse_config(
        {
            "quantization": {"weight_bits": [4, 8], "activation_bits": [8], "formats": ["int", "fp", "flint"]},
            "hardware": {"preset": "flexible"},
            "budget": 0.9,
        }
    )
    searched = ("block.conv1", "down")
    workload = dataclasses.replace(
        digits_workload,
        searched=searched,
        fixed={name: (8, 8) for name in digits_workload.layers.names if name not in searched},
    )
    return build_problem(config, workload=workload, evaluator=digits_evaluator)


def test_environment_action_gains_the_format_choice(formats_problem):
    env = BitWidthEnv(problem=formats_problem)
    assert env.action_space == gym.spaces.Box(-1, 1, (4,), np.float32)
    assert BitWidthEnv(problem=formats_problem, discrete=True).action_space == gym.spaces.MultiDiscrete([2, 1, 3, 3])
    rows = [line for line in BitWidthEnv.__doc__.splitlines() if line.strip().startswith("| ") and "_format" in line]
    assert [r.split("|")[2].strip() for r in rows] == ["w_format", "a_format"]
    env.reset(seed=0)
    # The lowest weight bits as fp (format 1 of 3: action 0), activations as flint (format 2: action 1).
    env.step(np.array([-1.0, 1.0, 0.0, 1.0], np.float32))
    *_, info = env.step(np.array([-1.0, -1.0, -1.0, -1.0], np.float32))
    assert info["policy"]["block.conv1"] == [FP + 4, FLINT + 8]
    assert info["policy"]["down"] == [4, 8]


@pytest.mark.parametrize("name", ["uniform", "random", "greedy", "hawq", "exhaustive", "mbppo"])
def test_every_baseline_searches_formats_within_budget(formats_problem, name):
    seen = []
    episodes = {"exhaustive": 2000, "mbppo": 24}.get(name, 12)
    context = SearchContext(problem=formats_problem, episodes=episodes, seed=0, record=seen.append, output=None)
    build_searcher(name, {}).search(context)
    # Greedy and mbppo also score probes over the budget; every searcher must find policies within it.
    fitting = [e for e in seen if e.within_budget]
    assert fitting
    used = {c for e in fitting for pair in e.policy.values() for c in pair}
    assert any(not formats.is_integer_code(c) for c in used)


def test_a_policy_mixing_formats_goes_through_search_cost_and_evaluate(digits_model, tmp_path, capsys):
    config = tmp_path / "formats.yaml"
    config.write_text(
        "quantization: {weight_bits: [4, 8], activation_bits: [4, 8], formats: [int, fp, flint]}\n"
        "hardware: {preset: flexible}\nbudget: 0.6\n"
    )
    run = tmp_path / "run"
    argv = ["--config", str(config)]
    assert main(["search", *argv, "--agent", "random", "--episodes", "3", "--output", str(run), "--no-progress"]) == 0
    capsys.readouterr()
    policy_file = run / "policy.json"
    layers = json.loads(policy_file.read_text())["layers"]
    assert {layer["w_format"] for layer in layers} | {layer["a_format"] for layer in layers} > {"int"}
    assert main(["cost", *argv, "--policy", str(policy_file), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["total"]["latency_ratio"] <= 0.6 * (1 + 1e-9)
    assert main(["evaluate", *argv, "--policy", str(policy_file), "--output", str(tmp_path / "eval")]) == 0
    evaluation = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert 0.5 < evaluation["test"]["before"]["top1"] <= 1.0
    # LSQ finetuning of a mixed policy (accuracy and export: tests/test_qat.py)
    finetuned = tmp_path / "finetuned"
    evaluate = ["evaluate", *argv, "--policy", str(policy_file), "--finetune-epochs", "1", "--output", str(finetuned)]
    assert main(evaluate) == 0
    assert json.loads((finetuned / "evaluation.json").read_text())["test"]["after"]["top1"] > 0.5
    assert (finetuned / "lsq_scales.safetensors").is_file()


def test_export_decodes_format_layers_in_onnx_like_the_simulator(digits_model, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    workload = load_workload(load_config({"quantization": {"formats": ["int", "fp", "flint"]}}))
    policy = {
        "stem": (8, 8),
        "block.conv1": (FP + 4, 4),
        "block.conv2": (4, FLINT + 4),
        "down": (FLINT + 3, FP + 6),
        "dw": (5, 3),
        "pw": (FLINT + 8, FLINT + 8),
        "down2": (FP + 5, FP + 5),
        "fc": (7, FP + 7),
        "classifier": (8, 8),
    }
    simulator = calibrated_simulator(workload)
    with simulator.applied(policy):
        expected = model_outputs(workload.model, workload.test).numpy()
    simulator.detach()
    sidecar = export_policy(workload, policy, tmp_path / "model.onnx")
    records = {r["name"]: r for r in sidecar["layers"]}
    assert records["block.conv1"]["weight"]["values"] == signed(0, 0.5, 1, 1.5, 2, 3, 4, 6)
    assert records["block.conv2"]["input"]["format"] == "flint" and records["block.conv2"]["w_bits"] == 4
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    inputs = torch.cat([x for x, _ in workload.test]).numpy()
    got = session.run(None, {"input": inputs})[0]
    assert np.abs(got - expected).max() < 1e-4
    assert (got.argmax(1) == expected.argmax(1)).all()
