"""Datasets and batches: item kinds, seeded limits, loading splits, and the errors users see."""

from __future__ import annotations

import pickle
import sys
import textwrap

import pytest
import torch
from torch.utils.data import TensorDataset

from mpq_rl.config import DataConfig
from mpq_rl.errors import UserError
from mpq_rl.imports import import_object
from mpq_rl.workloads import DATASETS
from mpq_rl.workloads.data import Batches, check_proxy_data, has_targets, load_data, make_batches, split_item


def labelled(n: int = 10) -> TensorDataset:
    return TensorDataset(torch.arange(n, dtype=torch.float32).unsqueeze(1).repeat(1, 3), torch.arange(n) % 4)


def tokenized(n: int = 6, with_labels: bool = False) -> list[dict[str, torch.Tensor]]:
    items = []
    for i in range(n):
        item = {"input_ids": torch.full((5,), i), "attention_mask": torch.ones(5, dtype=torch.long)}
        if with_labels:
            item["labels"] = torch.tensor(i % 2)
        items.append(item)
    return items


# ---- item kinds -------------------------------------------------------------------------------------------------


def test_split_item_kinds():
    x, y = torch.zeros(3), torch.tensor(1)
    assert split_item((x, y)) == (x, y)
    assert split_item(x) == (x, None)
    assert split_item((x,)) == (x, None)
    inputs, target = split_item({"input_ids": x, "labels": y})
    assert set(inputs) == {"input_ids"} and target is y
    with pytest.raises(UserError, match="dataset items must be"):
        split_item("a sentence")
    with pytest.raises(UserError, match="3-tuple"):
        split_item((x, y, y))


def test_labelled_tuples_collate():
    data = labelled(10)
    batches = make_batches(data, batch_size=4)
    assert batches.has_targets and has_targets(data)
    assert len(batches) == 3 and batches.num_samples == 10
    assert [x.shape[0] for x, _ in batches] == [4, 4, 2]
    assert torch.equal(batches.targets(), data.tensors[1])
    assert torch.equal(batches.example(), data.tensors[0][:4])


def test_bare_tensors_collate_without_targets():
    data = [torch.full((2, 2), float(i)) for i in range(5)]
    batches = make_batches(data, batch_size=2)
    assert not batches.has_targets and not has_targets(data)
    assert batches.targets() is None
    assert torch.equal(torch.cat([x for x, _ in batches]), torch.stack(data))
    assert all(t is None for _, t in batches)


def test_single_tensor_dataset_is_unlabelled():
    batches = make_batches(TensorDataset(torch.randn(7, 3)), batch_size=4)
    assert not batches.has_targets and batches.example().shape == (4, 3)


@pytest.mark.parametrize("with_labels", [False, True])
def test_dicts_collate(with_labels):
    batches = make_batches(tokenized(6, with_labels), batch_size=4)
    inputs = batches.example()
    assert set(inputs) == {"input_ids", "attention_mask"}
    assert inputs["input_ids"].shape == (4, 5)
    assert batches.has_targets is with_labels
    if with_labels:
        assert batches.targets().tolist() == [0, 1, 0, 1, 0, 1]


def test_mixed_targets_are_rejected():
    with pytest.raises(UserError, match="label all items or none"):
        make_batches([(torch.zeros(2), torch.tensor(0)), torch.zeros(2)], batch_size=2)


def test_batches_are_collated_once_and_picklable():
    batches = make_batches(labelled(10), batch_size=3)
    first, second = list(batches), list(batches)
    assert all(a[0] is b[0] for a, b in zip(first, second, strict=True))
    restored = pickle.loads(pickle.dumps(batches))
    assert isinstance(restored, Batches) and restored.num_samples == 10
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, restored, strict=True))


def test_to_device_keeps_structure():
    moved = make_batches(tokenized(3, with_labels=True), batch_size=2).to("cpu")
    assert moved.num_samples == 3 and moved.example()["input_ids"].device.type == "cpu"


# ---- seeded limit -----------------------------------------------------------------------------------------------


def test_limit_takes_the_first_samples_of_a_seeded_shuffle():
    data = labelled(50)
    batches = make_batches(data, batch_size=8, limit=20, seed=3)
    expected = torch.randperm(50, generator=torch.Generator().manual_seed(3))[:20]
    assert batches.num_samples == 20
    assert torch.equal(torch.cat([x for x, _ in batches])[:, 0].long(), expected)


def test_limit_is_deterministic_per_seed():
    data = labelled(50)

    def picked(seed):
        return torch.cat([x for x, _ in make_batches(data, batch_size=8, limit=20, seed=seed)])

    assert torch.equal(picked(0), picked(0))
    assert not torch.equal(picked(0), picked(1))


def test_limit_above_size_keeps_everything_in_order():
    data = labelled(5)
    batches = make_batches(data, batch_size=8, limit=100, seed=9)
    assert batches.num_samples == 5 and torch.equal(batches.example(), data.tensors[0])


def test_empty_dataset_is_an_error():
    with pytest.raises(UserError, match="no samples"):
        make_batches([], batch_size=4)


# ---- proxy data -------------------------------------------------------------------------------------------------


def test_top1_needs_targets():
    unlabelled = {"calibration": [torch.zeros(3)], "test": [torch.zeros(3)]}
    with pytest.raises(UserError, match="proxy.metric: fidelity") as err:
        check_proxy_data(unlabelled, "top1")
    assert "calibration split has no targets" in str(err.value)
    check_proxy_data(unlabelled, "fidelity")
    check_proxy_data({"calibration": labelled(), "test": labelled()}, "top1")


def test_proxy_without_data_is_an_error():
    with pytest.raises(UserError, match="needs calibration data"):
        check_proxy_data({}, "fidelity")


# ---- loading splits ---------------------------------------------------------------------------------------------

FACTORIES = """
import torch
from torch.utils.data import TensorDataset

NOT_CALLABLE = 3

def _data(n):
    return TensorDataset(torch.randn(n, 4), torch.zeros(n, dtype=torch.long))

def good(n=8):
    return {"calibration": _data(n), "test": _data(n), "train": _data(n)}

def seeded(seed=4):
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(seed + 3, 1, 8, 8, generator=generator)  # digits-shaped, for a workload test below
    data = TensorDataset(inputs, torch.zeros(seed + 3, dtype=torch.long))
    return {"calibration": data, "test": data}

def returns_list():
    return [_data(3)]

def missing_test():
    return {"calibration": _data(3)}

def empty_calibration():
    return {"calibration": _data(0), "test": _data(3)}

def extra_split():
    return {"calibration": _data(3), "test": _data(3), "validation": _data(3)}

def not_a_dataset():
    return {"calibration": 5, "test": _data(3)}

def strings():
    return {"calibration": ["a", "b"], "test": ["c"]}
"""


@pytest.fixture
def factories(tmp_path, monkeypatch):
    """A user module ``mpq_user_factories`` of data factories, importable for one test."""
    name = "mpq_user_factories"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(FACTORIES))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    yield name
    sys.modules.pop(name, None)


def test_no_data():
    assert load_data(DataConfig(name="none")) == {}
    assert load_data(DataConfig(name=None)) == {}


def test_builtin_names():
    assert set(DATASETS) == {"digits", "minilm_sentences", "imagenet", "cifar10", "text"}
    with pytest.raises(UserError, match=r"unknown data.name 'mnist': use one of \['cifar10', 'digits', 'imagenet'"):
        load_data(DataConfig(name="mnist"))


def test_factory_with_kwargs(factories):
    splits = load_data(DataConfig(factory=f"{factories}:good", kwargs={"n": 5}))
    assert set(splits) == {"calibration", "test", "train"} and len(splits["test"]) == 5


def test_factory_seed_comes_from_its_kwargs_never_from_the_run(factories):
    assert len(load_data(DataConfig(factory=f"{factories}:seeded"))["calibration"]) == 7
    assert len(load_data(DataConfig(factory=f"{factories}:seeded", kwargs={"seed": 2}))["calibration"]) == 5


def test_test_split_is_the_same_for_every_run_seed(factories):
    from mpq_rl.config import parse_config
    from mpq_rl.runs.assembly import load_workload

    def test_inputs(seed: int) -> torch.Tensor:
        config = parse_config(
            {"seed": seed, "model": {"name": "digits_cnn"}, "data": {"factory": f"{factories}:seeded"}}
        )
        workload = load_workload(config)
        return torch.cat([x for x, _ in workload.test])

    assert torch.equal(test_inputs(0), test_inputs(5))


@pytest.mark.parametrize(
    ("spec", "kwargs", "message"),
    [
        ("no_colon", {}, "data.factory must look like 'pkg.module:function', got 'no_colon'"),
        ("{m}:", {}, "data.factory must look like 'pkg.module:function'"),
        ("no_such_module_xyz:make", {}, "cannot import module 'no_such_module_xyz'"),
        ("{m}:missing", {}, "module 'mpq_user_factories' has no attribute 'missing'"),
        ("{m}:NOT_CALLABLE", {}, "'mpq_user_factories:NOT_CALLABLE' is not a function or class to call (it is a int)"),
        ("{m}:good", {"size": 3}, "data.kwargs do not fit good: got an unexpected keyword argument 'size'"),
        (
            "{m}:returns_list",
            {},
            "must return a dict {'calibration': Dataset, 'test': Dataset} (optionally 'train'), got list",
        ),
        ("{m}:missing_test", {}, "returned no 'test' split"),
        ("{m}:empty_calibration", {}, "split 'calibration' is empty"),
        ("{m}:extra_split", {}, "unknown split 'validation'"),
        ("{m}:not_a_dataset", {}, "split 'calibration' is not a dataset (it is a int)"),
        ("{m}:strings", {}, "dataset items must be (input, target) tuples"),
    ],
)
def test_factory_errors(factories, spec, kwargs, message):
    config = DataConfig(factory=spec.format(m=factories), kwargs=kwargs)
    with pytest.raises(UserError) as err:
        load_data(config)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_name_and_factory_conflict(factories):
    with pytest.raises(UserError, match="either data.name"):
        load_data(DataConfig(name="minilm_sentences", factory=f"{factories}:good"))


def test_import_object_dotted_attribute():
    assert import_object("torch.utils.data:TensorDataset.__len__", "x") is TensorDataset.__len__
