"""Weight-only searches (``activation_bits: []``) are costed against W8 at the activations' deployed precision."""

from __future__ import annotations

import pytest

from mpq_rl.cli import main
from mpq_rl.config import load_config
from mpq_rl.hardware import build_cost_table
from mpq_rl.runs.assembly import load_workload


@pytest.mark.parametrize("deployed", [32, 16, 8])
def test_weight_bits_alone_reach_the_budget(deployed):
    config = load_config().with_overrides(
        **{
            "quantization.activation_bits": [],
            "quantization.weight_only_activation_bits": deployed,
            "hardware.preset": "bops",
            "hardware.metric": "bops",
        }
    )
    assert config.quantization.reference_bits == (8, deployed)
    workload = load_workload(config)
    costs = build_cost_table(workload.layers, config.hardware, reference_bits=config.quantization.reference_bits)
    w4 = workload.uniform(4, deployed)
    assert set(w4.values()) == {(4, deployed)}
    # BOPs are MACs x w x a: at the deployed activation bits, halving the weight bits halves the cost exactly.
    assert costs.total(w4, "bops") / costs.reference("bops") == pytest.approx(0.5)
    assert costs.reference("bops") == pytest.approx(8 * deployed * workload.layers.total_macs)


def test_cost_command_names_the_reference(tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text("quantization: {activation_bits: [], weight_only_activation_bits: 16}\n")
    assert main(["cost", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "W8A16 reference" in out and "ratio vs W8A16" in out


def test_weight_only_activation_bits_must_be_a_bit_width(tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text("quantization: {activation_bits: [], weight_only_activation_bits: 12}\n")
    assert main(["cost", "--config", str(config)]) == 2
    assert "weight_only_activation_bits" in capsys.readouterr().err


def test_an_impossible_weight_only_budget_names_its_reference(tmp_path, capsys):
    config = tmp_path / "weight_only.yaml"
    config.write_text("quantization: {activation_bits: [], weight_only_activation_bits: 16}\n")
    args = ["search", "--config", str(config), "--budget", "0.01", "--output", str(tmp_path / "run"), "--no-progress"]
    assert main(args) == 2
    assert "budget 0.01 of W8A16 latency cannot be met" in capsys.readouterr().err
