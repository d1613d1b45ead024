"""The cached evaluator: pure, cached, persistable, buildable in another process; held-out accuracy."""

import dataclasses
import multiprocessing
import pickle

import pytest

from mpq_rl.config import load_config
from mpq_rl.errors import UserError
from mpq_rl.runs.assembly import load_workload, problem_settings
from mpq_rl.search.evaluator import EvaluationCache, Evaluator, evaluate_on_test, policy_key
from mpq_rl.search.problem import ProblemSpec


def test_repeated_policies_are_cache_hits_and_results_do_not_depend_on_history(digits_workload, digits_evaluator):
    ev = digits_evaluator
    low, high = digits_workload.uniform(3, 4), digits_workload.uniform(8, 8)
    first = ev.evaluate(low)
    ev.evaluate(high)
    hits = ev.cache.hits
    again = ev.evaluate(low)
    assert again == first and ev.cache.hits == hits + 1
    fresh = Evaluator.__new__(Evaluator)
    fresh.__dict__.update(ev.__dict__)
    fresh.cache = EvaluationCache()
    assert fresh.evaluate(low) == first  # recomputed after other policies: the same numbers


def test_proxy_falls_with_bits(digits_workload, digits_evaluator):
    scores = [digits_evaluator.evaluate(digits_workload.uniform(b, b))["agreement"] for b in (2, 3, 8)]
    assert scores[0] < scores[1] <= scores[2] >= 0.99  # W8A8 flips at most a borderline sample or two of 400


def test_cache_persists_and_rejects_foreign_files(tmp_path, digits_workload, digits_evaluator):
    digits_evaluator.evaluate(digits_workload.uniform(5, 5))
    path = tmp_path / "cache.json"
    digits_evaluator.cache.save(path)
    loaded = EvaluationCache.load(path)
    key = policy_key(digits_workload.uniform(5, 5), digits_evaluator.names)
    assert loaded.entries[key] == digits_evaluator.cache.entries[key]
    assert len(EvaluationCache.load(tmp_path / "absent.json")) == 0
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        EvaluationCache.load(tmp_path / "bad.json")


def _evaluate_in_child(spec, policy):
    return spec.build().evaluator.evaluate(policy)


def test_an_evaluator_built_in_another_process_agrees(digits_workload, digits_evaluator, model_cache):
    spec = ProblemSpec(problem_settings(load_config()))
    policy = digits_workload.uniform(4, 3)
    assert len(pickle.dumps((spec, policy))) < 4096  # a small spec, not a model
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        remote = pool.apply(_evaluate_in_child, (spec, policy))
    assert remote == pytest.approx(digits_evaluator.evaluate(policy), abs=1e-6)


def test_w8a8_keeps_held_out_accuracy_and_w2a2_loses_at_least_20_points(digits_workload, digits_evaluator):
    fp32 = evaluate_on_test(digits_workload, {}, digits_evaluator.simulator)["top1"]
    w8a8 = evaluate_on_test(digits_workload, digits_workload.uniform(8, 8), digits_evaluator.simulator)["top1"]
    w2a2 = evaluate_on_test(digits_workload, digits_workload.uniform(2, 2), digits_evaluator.simulator)["top1"]
    assert fp32 >= 0.97
    assert abs(w8a8 - fp32) <= 0.005
    assert w2a2 <= fp32 - 0.20


def test_the_evaluator_never_needs_the_test_split():
    no_test = dataclasses.replace(load_workload(load_config()), test=None)
    evaluator = Evaluator(no_test)
    try:
        assert 0.9 < evaluator.evaluate(no_test.uniform(6, 6))["top1"] <= 1.0
        with pytest.raises(UserError, match="needs a test split"):
            evaluate_on_test(no_test, no_test.uniform(6, 6), evaluator.simulator)
    finally:
        evaluator.close()
