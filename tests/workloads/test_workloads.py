"""The built-in workloads (digits + digits_cnn, minilm_sentences + minilm) and building models from a config."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import shutil
import sys

import numpy as np
import pytest
import torch
from torch import nn

from mpq_rl.config import DataConfig, ModelConfig
from mpq_rl.errors import UserError
from mpq_rl.workloads import MODELS
from mpq_rl.workloads import digits as digits_module
from mpq_rl.workloads.data import has_targets, load_data, make_batches
from mpq_rl.workloads.digits import (
    MANIFEST_FILE,
    SPLIT_SIZES,
    TRAIN_RECIPE,
    WEIGHTS_FILE,
    DigitsCNN,
    accuracy,
    split_indices,
    train_digits_cnn,
    trained_digits_cnn,
)
from mpq_rl.workloads.layers import discover_layers
from mpq_rl.workloads.models import build_model

DIGITS_LAYERS = ["stem", "block.conv1", "block.conv2", "down", "dw", "pw", "down2", "fc", "classifier"]


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ---- digits data ------------------------------------------------------------------------------------------------


def test_digits_split_sizes(digits_splits):
    assert {name: len(ds) for name, ds in digits_splits.items()} == SPLIT_SIZES
    images, labels = digits_splits["test"].tensors
    assert images.shape == (397, 1, 8, 8) and images.dtype == torch.float32 and labels.dtype == torch.int64
    assert images.min() >= 0.0 and images.max() <= 1.0 and images.max() == 1.0


def test_digits_splits_are_disjoint_and_cover_the_dataset():
    idx = split_indices()
    together = np.concatenate(list(idx.values()))
    assert len(together) == len(set(together.tolist())) == 1797


def test_digits_splits_are_stratified(digits_splits):
    from sklearn.datasets import load_digits

    overall = np.bincount(load_digits().target) / 1797
    for name, ds in digits_splits.items():
        counts = np.bincount(ds.tensors[1].numpy(), minlength=10)
        assert np.all(np.abs(counts - overall * len(ds)) <= 1.0), name


def test_digits_splits_match_sklearn_by_index(digits_splits):
    from sklearn.datasets import load_digits

    raw = load_digits()
    idx = split_indices()["calibration"]
    images, labels = digits_splits["calibration"].tensors
    assert np.allclose(images[:, 0].numpy(), raw.images[idx] / 16.0)
    assert np.array_equal(labels.numpy(), raw.target[idx])


def test_digits_split_is_fixed_whatever_the_run_seed():
    first = {k: v.tolist() for k, v in split_indices().items()}
    assert first == {k: v.tolist() for k, v in split_indices().items()}
    a, b = load_data(DataConfig(name="digits")), load_data(DataConfig(name="digits"))
    assert all(torch.equal(a[k].tensors[0], b[k].tensors[0]) for k in SPLIT_SIZES)


def test_digits_takes_no_kwargs():
    with pytest.raises(UserError, match="data.kwargs do not fit load_digits"):
        load_data(DataConfig(name="digits", kwargs={"test_size": 100}))


# ---- digits_cnn -------------------------------------------------------------------------------------------------


def test_digits_cnn_layers(digits_model, digits_splits):
    table = discover_layers(digits_model, digits_splits["calibration"].tensors[0][:4], "digits_cnn")
    assert table.names == DIGITS_LAYERS
    assert table["dw"].is_depthwise and table["pw"].kernel == (1, 1)
    assert table["down"].stride == (2, 2) and table["classifier"].out_channels == 10


def test_digits_cnn_fp32_accuracy(digits_model, digits_splits, model_cache):
    test_accuracy = accuracy(digits_model, digits_splits["test"])
    assert test_accuracy >= 0.97
    manifest = json.loads((model_cache / MANIFEST_FILE).read_text())
    assert manifest["fp32_test_accuracy"] == pytest.approx(test_accuracy)


def fake_quant(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-tensor symmetric (signed data) or unsigned (non-negative data) uniform quantization, max-scaled."""
    if (x < 0).any():
        qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        scale = x.abs().max() / qmax
    else:
        qmin, qmax = 0, 2**bits - 1
        scale = x.max() / qmax
    scale = scale.clamp(min=1e-12)
    return (x / scale).round().clamp(qmin, qmax) * scale


def test_digits_cnn_is_hurt_by_two_bit_quantization(digits_model, digits_splits):
    model = copy.deepcopy(digits_model)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                module.weight.copy_(fake_quant(module.weight, 2))
                module.register_forward_pre_hook(lambda _, args: (fake_quant(args[0], 2),))
    drop = accuracy(digits_model, digits_splits["test"]) - accuracy(model, digits_splits["test"])
    assert drop >= 0.20


def test_cache_is_loaded_not_retrained(digits_model, model_cache, monkeypatch):
    monkeypatch.setattr(digits_module, "train_digits_cnn", pytest.fail)
    again = trained_digits_cnn(model_cache)
    assert same_weights(again, digits_model) and not again.training
    manifest = json.loads((model_cache / MANIFEST_FILE).read_text())
    assert manifest["weights_sha256"] == hashlib.sha256((model_cache / WEIGHTS_FILE).read_bytes()).hexdigest()


@pytest.fixture
def cache_copy(model_cache, tmp_path, digits_model, monkeypatch):
    """A private copy of the trained cache; "training" returns the trained model and is counted."""
    for name in (WEIGHTS_FILE, MANIFEST_FILE):
        shutil.copy(model_cache / name, tmp_path / name)
    calls = []

    def fake_train(train):
        calls.append(len(train))
        return copy.deepcopy(digits_model)

    monkeypatch.setattr(digits_module, "train_digits_cnn", fake_train)
    return tmp_path, calls


def break_weights(cache):
    data = bytearray((cache / WEIGHTS_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (cache / WEIGHTS_FILE).write_bytes(bytes(data))


def make_stale(cache):
    manifest = json.loads((cache / MANIFEST_FILE).read_text())
    manifest["recipe_sha256"] = "0" * 64
    (cache / MANIFEST_FILE).write_text(json.dumps(manifest))


def unreadable_manifest(cache):
    (cache / MANIFEST_FILE).write_text("{not json")


def missing_weights(cache):
    (cache / WEIGHTS_FILE).unlink()


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (break_weights, "corrupted"),
        (make_stale, "stale"),
        (unreadable_manifest, "unreadable"),
        (missing_weights, "unreadable"),
    ],
)
def test_damaged_cache_is_rebuilt_with_a_warning(cache_copy, digits_model, damage, reason, caplog):
    cache, calls = cache_copy
    damage(cache)
    with caplog.at_level(logging.WARNING, logger="mpq_rl.workloads.digits"):
        rebuilt = trained_digits_cnn(cache)
    assert calls == [1000]
    assert same_weights(rebuilt, digits_model)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and reason in warnings[0] and "retraining" in warnings[0]
    trained_digits_cnn(cache)
    assert calls == [1000], "the rebuilt cache must load without training again"


def test_training_is_deterministic_whatever_the_callers_thread_count(digits_splits, monkeypatch):
    monkeypatch.setitem(TRAIN_RECIPE, "epochs", 1)
    first = train_digits_cnn(digits_splits["train"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1 if TRAIN_RECIPE["threads"] != 1 else 2)
    try:
        second = train_digits_cnn(digits_splits["train"])
        assert torch.get_num_threads() == (1 if TRAIN_RECIPE["threads"] != 1 else 2), "the caller's count is restored"
    finally:
        torch.set_num_threads(threads)
    assert same_weights(first, second) and not same_weights(first, DigitsCNN())


def test_build_digits_cnn_by_name_uses_the_cache(digits_model, monkeypatch):
    monkeypatch.setattr(digits_module, "train_digits_cnn", pytest.fail)
    model = build_model(ModelConfig(name="digits_cnn"))
    assert isinstance(model, DigitsCNN) and not model.training and same_weights(model, digits_model)


# ---- build_model ------------------------------------------------------------------------------------------------


def test_model_registry_names():
    assert {"digits_cnn", "minilm", "mobilenet_v2", "resnet18", "resnet50"} <= set(MODELS)
    with pytest.raises(UserError, match=r"unknown model.name 'vgg': use one of \['causal_lm', 'digits_cnn', "):
        build_model(ModelConfig(name="vgg"))


def linear_config(weights):
    return ModelConfig(factory="torch.nn:Linear", kwargs={"in_features": 3, "out_features": 2}, weights=weights)


def test_factory_model_with_weights(tmp_path):
    source = nn.Linear(3, 2)
    torch.save(source.state_dict(), tmp_path / "w.pt")
    model = build_model(linear_config(tmp_path / "w.pt"))
    assert same_weights(model, source) and not model.training


def test_factory_must_return_a_module():
    with pytest.raises(
        UserError, match="model.factory 'collections:OrderedDict' must return a torch.nn.Module, got OrderedDict"
    ):
        build_model(ModelConfig(factory="collections:OrderedDict"))


def test_mismatched_weights_name_the_keys(tmp_path):
    torch.save({"weight": torch.zeros(2, 3), "extra.bias": torch.zeros(2)}, tmp_path / "w.pt")
    config = linear_config(tmp_path / "w.pt")
    with pytest.raises(UserError, match=r"missing keys \['bias'\] \(1 in all\), unexpected keys \['extra.bias'\]"):
        build_model(config)


def test_wrong_shape_weights(tmp_path):
    torch.save({"weight": torch.zeros(2, 4), "bias": torch.zeros(2)}, tmp_path / "w.pt")
    config = linear_config(tmp_path / "w.pt")
    with pytest.raises(UserError, match=r"'weight' has shape \[2, 4\] in the file but \[2, 3\] in the model"):
        build_model(config)


def test_unreadable_weights(tmp_path):
    (tmp_path / "w.pt").write_text("not a checkpoint")
    config = linear_config(tmp_path / "w.pt")
    with pytest.raises(UserError, match="cannot be read as a state dict"):
        build_model(config)


# ---- minilm -----------------------------------------------------------------------------------------------------


def test_minilm_searches_36_linear_layers_and_leaves_out_the_unused_pooler(minilm_model, minilm_splits):
    example = make_batches(minilm_splits["calibration"], batch_size=4).example()
    table = discover_layers(minilm_model, example, "minilm")
    assert len(table) == 36 and all(layer.kind == "linear" for layer in table)
    assert table.names[0] == "transformer.encoder.layer.0.attention.self.query"
    assert table.names[-1] == "transformer.encoder.layer.5.output.dense"
    assert list(table.left_out) == ["transformer.pooler.dense"]
    assert "never reaches" in table.left_out["transformer.pooler.dense"]


def test_minilm_embeddings_are_unit_norm(minilm_model, minilm_splits):
    inputs = make_batches(minilm_splits["test"], batch_size=8).example()
    with torch.no_grad():
        embeddings = minilm_model(**inputs)
    assert embeddings.shape == (8, 384)
    assert torch.allclose(embeddings.norm(dim=1), torch.ones(8), atol=1e-5)


def test_minilm_matches_a_direct_mean_pool(minilm_model, minilm_splits):
    from mpq_rl.workloads.minilm import load_tokenizer

    dataset = minilm_splits["calibration"]
    sentence, item = dataset.sentences[0], dataset[0]
    encoded = load_tokenizer()(sentence, return_tensors="pt")  # unpadded: padding must not change the result
    with torch.no_grad():
        tokens = minilm_model.transformer(**encoded).last_hidden_state[0]
        direct = torch.nn.functional.normalize(tokens.mean(dim=0), dim=0)
        ours = minilm_model(**{k: v.unsqueeze(0) for k, v in item.items()})[0]
    assert int(item["attention_mask"].sum()) == encoded["input_ids"].shape[1] < 64
    assert torch.allclose(ours, direct, atol=1e-5)


def test_minilm_embeddings_carry_meaning(minilm_model):
    from mpq_rl.workloads.minilm import load_tokenizer

    sentences = ["A man is eating food.", "A man is eating a piece of bread.", "The stock market fell sharply."]
    encoded = load_tokenizer()(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        e = minilm_model(**encoded)
    assert e[0] @ e[1] > e[0] @ e[2] + 0.3


def test_minilm_sentences_are_disjoint_unlabelled_and_fixed_length(minilm_splits):
    calibration, test = minilm_splits["calibration"], minilm_splits["test"]
    assert (len(calibration), len(test)) == (256, 256)
    assert not set(calibration.sentences) & set(test.sentences)
    assert not has_targets(calibration)
    assert set(calibration[0]) == {"input_ids", "attention_mask", "token_type_ids"}
    assert calibration[0]["input_ids"].shape == (64,)
    assert all(6 <= len(s.split()) <= 40 for s in calibration.sentences + test.sentences)


def test_minilm_sentences_are_deterministic(minilm_splits):
    from mpq_rl.workloads.minilm import load_minilm_sentences, stdlib_sentences

    assert stdlib_sentences() == stdlib_sentences()
    again = load_minilm_sentences()
    assert again["test"].sentences == minilm_splits["test"].sentences
    assert torch.equal(again["calibration"].tensors["input_ids"], minilm_splits["calibration"].tensors["input_ids"])


def test_minilm_sentence_kwargs(minilm_splits):
    splits = load_data(DataConfig(name="minilm_sentences", kwargs={"calibration_size": 32, "max_length": 16}))
    assert len(splits["calibration"]) == 32 and splits["calibration"][0]["input_ids"].shape == (16,)
    assert splits["test"].sentences == minilm_splits["test"].sentences, "calibration_size must not move the test set"
    with pytest.raises(UserError, match="only .* are available"):
        load_data(DataConfig(name="minilm_sentences", kwargs={"calibration_size": 100_000}))


def test_minilm_without_the_nlp_extra(monkeypatch):
    from mpq_rl.workloads.minilm import build_minilm

    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(
        UserError, match=r"needs the nlp extra \(transformers is missing\): pip install 'mpq_rl\[nlp\]'"
    ):
        build_minilm()
