"""Layer discovery on plain, residual, grouped, shared and 1-D/3-D models."""

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from mpq_rl.errors import UserError
from mpq_rl.workloads.layers import discover_layers


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.grouped = nn.Conv2d(8, 16, 1, groups=2, stride=2)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = x + self.a(x)
        x = self.grouped(self.dw(x))
        return self.head(x.mean(dim=(2, 3)))


class Shared(nn.Module):
    """One linear applied twice, and a linear that never runs."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Linear(4, 4)
        self.unused = nn.Linear(4, 4)

    def forward(self, x):
        return self.shared(torch.relu(self.shared(x)))


def test_residual_model_layers_in_execution_order_with_measured_macs():
    table = discover_layers(Residual(), torch.randn(2, 3, 8, 8))
    assert table.names == ["stem", "a", "dw", "grouped", "head"]
    stem, a, dw, grouped, head = table.layers
    assert stem.macs == 8 * 8 * 8 * 3 * 9
    assert a.macs == 8 * 8 * 8 * 8 * 9
    assert dw.is_depthwise and dw.macs == 8 * 8 * 8 * 1 * 9 and dw.reduction == 9
    assert not grouped.is_depthwise and grouped.groups == 2
    assert grouped.output_shape == (16, 4, 4) and grouped.stride == (2, 2)
    assert grouped.macs == 16 * 4 * 4 * 4
    assert head.is_linear and head.macs == 160 and head.params == 170
    assert table.example_batch == 2
    assert table.total_macs == sum(layer.macs for layer in table)


def test_shared_module_appears_once_with_summed_macs_and_unused_is_skipped():
    table = discover_layers(Shared(), torch.randn(5, 4))
    assert table.names == ["shared"]
    assert table["shared"].calls == 2
    assert table["shared"].macs == 2 * 16


def test_sequence_inputs_count_macs_per_token():
    model = nn.Sequential(nn.Linear(6, 12), nn.GELU(), nn.Linear(12, 6))
    table = discover_layers(model, torch.randn(3, 7, 6))
    assert table["0"].input_shape == (7, 6)
    assert table["0"].macs == 7 * 6 * 12


def test_conv1d_and_conv3d():
    conv1 = discover_layers(nn.Sequential(nn.Conv1d(2, 4, 3)), torch.randn(1, 2, 10))
    assert conv1["0"].kind == "conv1d" and conv1["0"].macs == 4 * 8 * 2 * 3
    conv3 = discover_layers(nn.Sequential(nn.Conv3d(1, 2, 3)), torch.randn(1, 1, 4, 4, 4))
    assert conv3["0"].kind == "conv3d" and conv3["0"].macs == 2 * 8 * 27


def test_dict_inputs_are_passed_as_keywords():
    class Keyword(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(3, 2)

        def forward(self, features, mask):
            return self.proj(features * mask)

    table = discover_layers(Keyword(), {"features": torch.randn(4, 3), "mask": torch.ones(4, 3)})
    assert table.names == ["proj"] and table.example_batch == 4


def test_model_without_quantizable_layers_is_a_clear_error():
    with pytest.raises(UserError, match="no quantizable layer"):
        discover_layers(nn.Sequential(nn.ReLU()), torch.randn(1, 3))


def test_table_round_trips_and_selects_by_regex():
    table = discover_layers(Residual(), torch.randn(1, 3, 8, 8), model_name="residual")
    assert json.loads(json.dumps(table.to_dict()))["layers"][0]["name"] == table.names[0]
    assert table.select(exclude="^(stem|head)$") == ["a", "dw", "grouped"]
    assert table.select(include="^(d|h)") == ["dw", "head"]
    with pytest.raises(UserError, match="leave no layer"):
        table.select(include="nothing")
    with pytest.raises(UserError, match="unknown layer 'nope'"):
        table.index_of("nope")


def test_discovery_leaves_training_mode_alone():
    model = Residual().train()
    discover_layers(model, torch.randn(1, 3, 8, 8))
    assert model.training


class DeadBranch(nn.Module):
    """A layer that runs, but whose output the model throws away (like a BERT pooler under mean pooling)."""

    def __init__(self) -> None:
        super().__init__()
        self.used = nn.Linear(4, 3)
        self.pooler = nn.Linear(3, 3)

    def forward(self, x):
        hidden = self.used(x)
        self.pooler(hidden[:1])  # computed and discarded
        return hidden * 2


def test_layer_whose_output_never_reaches_the_model_output_is_left_out_with_its_reason():
    model = DeadBranch()
    for p in model.parameters():
        p.requires_grad_(False)
    table = discover_layers(model, torch.randn(5, 4))
    assert table.names == ["used"]
    assert set(table.left_out) == {"pooler"} and "never reaches" in table.left_out["pooler"]
    assert not any(p.requires_grad for p in model.parameters())  # flags restored
    assert json.loads(json.dumps(table.to_dict()))["layers"][0]["name"] == table.names[0]


def test_a_model_with_no_live_layer_is_refused():
    class AllDead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.bias = nn.Parameter(torch.zeros(4))

        def forward(self, x):
            self.fc(x)
            return x + self.bias

    with pytest.raises(UserError, match="no quantizable layer's output reaches"):
        discover_layers(AllDead(), torch.randn(2, 4))


def dead_branch() -> nn.Module:
    """A factory for the CLI test below."""
    return DeadBranch()


def test_layers_command_names_what_it_leaves_out_and_why(tmp_path, capsys, monkeypatch):
    from mpq_rl.cli import main

    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    config = tmp_path / "run.yaml"
    config.write_text("model: {factory: 'test_layers:dead_branch', input_shape: [1, 4]}\ndata: {name: none}\n")
    main(["layers", "--config", str(config)])
    out = capsys.readouterr().out
    assert "1 quantizable layers, 1 searched" in out
    assert "left out: pooler (its output never reaches the model's output; not searched, FP32, costs nothing)" in out
