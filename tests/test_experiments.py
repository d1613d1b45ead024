"""The experiment configs validate and build their cost tables here (ImageNet ones without their data)."""

import json
from pathlib import Path

import numpy as np
import pytest

from mpq_rl.cli import main
from mpq_rl.config import load_config
from mpq_rl.errors import UserError
from mpq_rl.hardware import build_cost_table
from mpq_rl.runs.assembly import load_workload
from mpq_rl.workloads.vision_data import load_cifar10, load_imagenet

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "experiments" / "configs").glob("*.yaml"))
USER_DATA = ("imagenet", "cifar10")


def test_there_are_configs_for_both_built_in_workloads_and_the_published_settings():
    names = {path.stem for path in CONFIGS}
    assert {"digits", "minilm", "haq_mobilenetv2_lut", "hawq_resnet18", "hawq_resnet50"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_validates_and_builds_its_cost_table(path, monkeypatch):
    monkeypatch.chdir(ROOT)
    config = load_config(path)
    with_data = config.data.name not in USER_DATA
    if not with_data:
        assert config.model.input_shape is not None, "configs on user data must give model.input_shape"
    if config.model.name == "minilm":
        pytest.importorskip("transformers")
    if (config.model.factory or "").startswith("torchvision"):
        pytest.importorskip("torchvision")
    workload = load_workload(config, with_data=with_data)
    costs = build_cost_table(workload.layers, config.hardware)
    reference = costs.reference(config.hardware.metric)
    assert np.isfinite(reference) and reference > 0
    lowest = workload.uniform(min(config.quantization.weight_bits), min(config.quantization.activation_candidates))
    assert costs.total(lowest, config.hardware.metric) / reference <= config.budget.fraction


IMAGENET_LAYERS = {
    "haq_mobilenetv2_bismo_pynq": 53,
    "haq_mobilenetv2_bismo_ultra96": 53,
    "haq_mobilenetv2_lut": 53,
    "hawq_resnet18": 21,
    "hawq_resnet50": 54,
    "vit_b16_t4": 50,
}
"""The ImageNet configs (torchvision data; ViT-B/16 also torchvision's model) and their layer counts."""


@pytest.mark.parametrize("name", sorted(IMAGENET_LAYERS))
def test_imagenet_configs_cost_without_data_or_weights(name, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    path = ROOT / "experiments" / "configs" / f"{name}.yaml"
    if (load_config(path).model.factory or "").startswith("torchvision"):
        pytest.importorskip("torchvision")
    assert main(["cost", "--config", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["layers"]) == IMAGENET_LAYERS[name] and report["reference_bits"] == [8, 8]
    assert report["total"]["latency_ratio"] == pytest.approx(1.0)


@pytest.mark.parametrize(("factory", "layers"), [("mobilenet_v2", 53), ("vit_b_16", 50)])
def test_torchvision_models_are_covered_whole(factory, layers, tmp_path, capsys):
    pytest.importorskip("torchvision")
    config = tmp_path / "config.yaml"
    config.write_text(
        f"model: {{factory: 'torchvision.models:{factory}', kwargs: {{weights: null}}, "
        "input_shape: [1, 3, 224, 224]}\n"
    )
    assert main(["layers", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert f"{layers} quantizable layers" in out and "weights covered: 100.00%" in out and "not covered" not in out


def test_haq_config_reproduces_the_published_table_size():
    config = load_config(ROOT / "experiments" / "configs" / "haq_mobilenetv2_lut.yaml")
    assert (config.budget.fraction, config.hardware.preset) == (0.6, "lut")


def test_user_data_sets_need_their_folders(tmp_path):
    try:
        import torchvision  # noqa: F401
    except ImportError:
        with pytest.raises(UserError, match="need torchvision"):
            load_imagenet(str(tmp_path))
        return
    with pytest.raises(UserError, match="does not exist"):
        load_imagenet(str(tmp_path / "missing"))
    with pytest.raises(UserError, match="cifar-10-batches-py"):
        load_cifar10(str(tmp_path))
