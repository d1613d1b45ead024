"""Finetuning that never hurts (mpq_rl.deployment.validation): a validation part held out of the train split, and
the best epoch by it, the calibrated start included."""

from __future__ import annotations

import torch

from mpq_rl.config import load_config
from mpq_rl.deployment.finetune import finetune
from mpq_rl.deployment.validation import split_train
from mpq_rl.runs.assembly import load_workload
from mpq_rl.workloads.workload import Workload

POLICY = (3, 3)


def fresh_workload() -> Workload:
    return load_workload(load_config())


def test_the_validation_part_is_seeded_disjoint_and_a_fifth_of_the_train_split(digits_workload):
    learn, validation = split_train(digits_workload.train)
    again = split_train(digits_workload.train)[1]
    assert validation.indices == again.indices
    assert not set(learn.indices) & set(validation.indices)
    assert len(validation) == round(0.2 * len(digits_workload.train))
    assert len(learn) + len(validation) == len(digits_workload.train)


def test_finetuning_never_returns_weights_worse_on_validation_than_its_start(one_thread):
    """A learning rate that wrecks the weights: the best epoch is the start, whose weights come back bit for bit;
    with keep_last the wrecked ones are returned, and their validation score says so."""
    workload = fresh_workload()
    policy = dict.fromkeys(workload.layers.names, POLICY)
    start = {k: v.clone() for k, v in workload.model.state_dict().items()}
    result = finetune(workload, policy, epochs=1, lr=0.5, seed=0)
    first, last = result.validation
    assert (first.epoch, last.epoch) == (0, 1)
    assert last.top1 < first.top1  # the epoch did hurt
    assert result.kept_epoch == 0 and result.validation_kept == first
    assert all(torch.equal(result.state_dict[k], v) for k, v in start.items())
    assert result.after == result.before  # the start's weights and scales, scored again on the test split

    workload.model.load_state_dict(start)
    kept_last = finetune(workload, policy, epochs=1, lr=0.5, seed=0, keep_last=True)
    assert kept_last.kept_epoch == 1
    assert kept_last.after["top1"] < kept_last.before["top1"]


def test_the_kept_epoch_is_the_best_on_validation(one_thread):
    workload = fresh_workload()
    result = finetune(workload, dict.fromkeys(workload.layers.names, POLICY), epochs=2, seed=0, distill=1.0)
    best = max(result.validation, key=lambda s: (s.top1, -s.loss, -s.epoch))
    assert result.validation_kept == best
    assert best.top1 >= result.validation[0].top1
    record = result.to_json()
    assert record["finetune"]["kept_epoch"] == best.epoch and record["finetune"]["distill"] == 1.0
    assert [s["epoch"] for s in record["validation"]] == [0, 1, 2]
