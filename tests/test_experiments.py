"""The experiment configs validate and build their cost tables here (ImageNet ones without their data)."""

from pathlib import Path

import numpy as np
import pytest

from mpq_rl.config import load_config
from mpq_rl.errors import UserError
from mpq_rl.hardware import build_cost_table
from mpq_rl.workload import load_workload
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
    workload = load_workload(config, with_data=with_data)
    costs = build_cost_table(workload.layers, config.hardware)
    reference = costs.reference(config.hardware.metric)
    assert np.isfinite(reference) and reference > 0
    lowest = workload.uniform(min(config.quantization.weight_bits), min(config.quantization.activation_candidates))
    assert costs.total(lowest, config.hardware.metric) / reference <= config.budget.fraction


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
