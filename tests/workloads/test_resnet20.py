"""The resnet20_digits built-in: 22 quantizable layers named by role, trained once and cached like the digits CNN."""

import json

import pytest
import torch

from mpq_rl.workloads import MODELS
from mpq_rl.workloads import resnet20 as resnet20_module
from mpq_rl.workloads.layers import discover_layers
from mpq_rl.workloads.resnet20 import RESNET20, TRAIN_RECIPE, ResNet20, build_resnet20_digits


def test_resnet20_has_22_layers_named_by_role():
    table = discover_layers(ResNet20().eval(), torch.zeros(2, 1, 8, 8), "resnet20_digits")
    assert len(table.names) == 22
    assert table.names[0] == "stem" and table.names[-1] == "classifier"
    assert "stage2.0.shortcut.0" in table.names and "stage3.0.shortcut.0" in table.names
    assert table["stage3.2.conv2"].out_channels == 64 and table["stage2.0.conv1"].stride == (2, 2)
    assert MODELS.source("resnet20_digits") == "mpq_rl.workloads.resnet20:build_resnet20_digits"


def test_trained_once_then_loaded_from_the_cache(tmp_path, monkeypatch, one_thread):
    monkeypatch.setitem(TRAIN_RECIPE, "epochs", 1)
    trained = build_resnet20_digits(tmp_path)
    manifest = json.loads((tmp_path / RESNET20.manifest_file).read_text())
    assert manifest["format"] == RESNET20.cache_format and manifest["recipe_sha256"] == RESNET20.recipe_hash()
    monkeypatch.setattr(resnet20_module, "train_resnet20", pytest.fail)
    again = build_resnet20_digits(tmp_path)
    assert not again.training
    pairs = zip(trained.state_dict().values(), again.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
