"""The Ray backend on a real local two-CPU cluster: a comparison's runs as Ray tasks give the serial comparison's
results; actors score what the local backend scores; an actor killed mid-batch is replaced and its evaluation
retried, with nothing lost or evaluated twice.

The cluster starts once for the module (about 10 s). The comparison test comes first: its tasks need the two CPUs
that the actors of the later tests hold while the ``actors`` fixture lives.
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from mpq_rl.agents.random_search import sample_policy
from mpq_rl.config import ParallelConfig
from mpq_rl.runs.assembly import build_problem
from mpq_rl.runs.compare import COMPARE_JSON, compare
from mpq_rl.search.evaluator import EvaluationCache
from mpq_rl.search.pool import EvaluationPool
from mpq_rl.search.ray_cluster import connect, disconnect

ray = pytest.importorskip("ray")

KEPT = ("agent", "seed", "test", "proxy", "cost_ratio", "evaluations")
"""What a comparison's runs must agree on (wall times differ)."""


@pytest.fixture(scope="module", autouse=True)
def cluster(digits_model):
    """A local Ray cluster with two CPUs, started as a search starts one (the backends keep it: they did not)."""
    assert connect(None, cpus=2)
    yield
    disconnect(True)


def test_compare_on_ray_gives_the_serial_comparison(small_digits_config, tmp_path, one_thread):
    config = small_digits_config.with_overrides(**{"agent.episodes": 4})
    rows = {}
    for backend in ("local", "ray"):
        run = config.with_overrides(**{"parallel.backend": backend})
        compare(run, ["random", "greedy"], [0], tmp_path / backend)
        found = json.loads((tmp_path / backend / COMPARE_JSON).read_text())["runs"]
        rows[backend] = [{k: r[k] for k in KEPT} for r in found]
        assert (tmp_path / backend / "greedy-seed0" / "summary.json").is_file()
    assert rows["ray"] == rows["local"]
    assert len(rows["ray"]) == 2


@pytest.fixture(scope="module")
def problem(small_digits_config):
    return build_problem(small_digits_config)


@pytest.fixture(scope="module")
def actors(problem):
    pool = EvaluationPool(problem, ParallelConfig(backend="ray", workers=2))
    yield pool
    pool.close()


def test_ray_actors_record_what_a_serial_search_does(problem, actors, episodes_of, one_thread):
    problem.evaluator.cache = EvaluationCache()
    serial = episodes_of(problem, "random", 8)
    serial_misses = problem.evaluator.cache.misses
    problem.evaluator.cache = EvaluationCache()
    assert episodes_of(problem, "random", 8, actors) == serial
    assert problem.evaluator.cache.misses == 0 < serial_misses  # every policy came from the actors


def test_a_killed_actor_is_replaced_and_its_evaluation_retried_once(problem, actors, one_thread):
    backend = actors.backend
    rng = np.random.default_rng(7)
    policies = [problem.policy(sample_policy(problem.budget, rng)) for _ in range(16)]
    expected = [problem.evaluator.measure(p) for p in policies]
    backend.evaluate(policies[:2])  # both actors built and warm
    dispatched, replaced = backend.dispatched, backend.replaced

    results = []
    worker = threading.Thread(target=lambda: results.append(backend.evaluate(policies)))
    worker.start()
    while backend.dispatched < dispatched + 4:  # mid-batch: a few evaluations in, most still to come
        time.sleep(0.005)
    victim = backend.actors[0]
    ray.kill(victim)
    worker.join()

    assert backend.replaced == replaced + 1 and victim not in backend.actors
    assert results == [expected]  # every policy, in order, measured as the driver measures it
    assert backend.dispatched == dispatched + len(policies) + 1  # only the killed actor's evaluation went twice
