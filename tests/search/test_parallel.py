"""Where evaluations run: the ``parallel`` section and its flags, torch threads per process, and the process
backend giving exactly the episodes of a serial search."""

from __future__ import annotations

import os
import sys

import pytest

from mpq_rl.cli import main
from mpq_rl.config import ParallelConfig, parse_config
from mpq_rl.errors import UserError
from mpq_rl.runs.assembly import build_problem
from mpq_rl.search.evaluator import EvaluationCache
from mpq_rl.search.pool import EvaluationPool, local_processes, resolve_parallel
from mpq_rl.search.threads import THREADS_ENV, threads_per_process, usable_cores


@pytest.mark.parametrize(
    ("parallel", "message"),
    [
        ({"backend": "local", "workers": 2}, "parallel.backend local evaluates one policy at a time"),
        ({"backend": "process", "address": "auto"}, "set parallel.backend: ray"),
        ({"backend": "ray", "address": "my cluster"}, "host:port like 10.0.0.5:6379, got 'my cluster'"),
        ({"backend": "gpu"}, "key 'parallel.backend': input should be 'local', 'process' or 'ray'"),
        ({"workers": 0}, "key 'parallel.workers': input should be greater than 0"),
        ({"nodes": 2}, "unknown key 'parallel.nodes'"),
    ],
)
def test_bad_parallel_sections_are_one_line_errors(parallel, message):
    with pytest.raises(UserError, match="^config: .*") as error:
        parse_config({"parallel": parallel})
    assert message in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("parallel", "n_envs", "backend", "workers"),
    [
        ({}, 1, "local", 1),
        ({}, 3, "process", 3),  # configs from before the section: n_envs > 1 evaluated in processes
        ({"backend": "local"}, 3, "local", 1),  # the environments step together, evaluated one at a time
        ({"workers": 2}, 1, "process", 2),
        ({"backend": "ray", "address": "auto"}, 4, "ray", 4),
        ({"backend": "ray", "address": "10.0.0.5:6379", "workers": 8}, 1, "ray", 8),
    ],
)
def test_parallel_resolves_against_n_envs(parallel, n_envs, backend, workers):
    config = parse_config({"parallel": parallel, "agent": {"n_envs": n_envs}})
    resolved = resolve_parallel(config.parallel, n_envs)
    assert (resolved.backend, resolved.workers) == (backend, workers)


def test_process_backend_without_workers_uses_the_usable_cores():
    parallel = parse_config({"parallel": {"backend": "process"}}).parallel
    assert resolve_parallel(parallel, 1).workers == len(os.sched_getaffinity(0))


def test_threads_share_the_usable_cores_unless_omp_num_threads_is_set(monkeypatch):
    monkeypatch.delenv(THREADS_ENV, raising=False)
    cores = len(os.sched_getaffinity(0))
    assert usable_cores() == cores
    assert threads_per_process(1) == cores
    assert threads_per_process(cores + 1) == 1
    assert threads_per_process(2) == max(1, cores // 2)
    monkeypatch.setenv(THREADS_ENV, "3")
    assert threads_per_process(8) == 3


def test_local_processes_count_the_driver_and_its_local_workers():
    assert local_processes(ParallelConfig(backend="local", workers=1)) == 1
    assert local_processes(ParallelConfig(backend="process", workers=4)) == 5
    assert local_processes(ParallelConfig(backend="ray", workers=4)) == 5  # a local cluster started for the run
    assert local_processes(ParallelConfig(backend="ray", workers=4, address="auto")) == 1


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--backend", "local", "--workers", "2"], "parallel.backend local evaluates one policy at a time"),
        (["--address", "auto"], "parallel.address names a Ray cluster"),
        (["--workers", "0"], "key 'parallel.workers': input should be greater than 0"),
    ],
)
def test_bad_parallel_flags_exit_2_with_one_line(flags, message, tmp_path, capsys):
    assert main(["search", "--output", str(tmp_path / "run"), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mpq-rl: error: command line: ") and message in err
    assert err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_ray_backend_without_ray_is_one_line_and_writes_nothing(monkeypatch, digits_model, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets where Ray is not installed
    config = tmp_path / "small.yaml"
    config.write_text("data: {calibration_samples: 64}\n")
    argv = ["search", "--config", str(config), "--backend", "ray", "--output", str(tmp_path / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "parallel.backend ray needs Ray, which is not installed: pip install -e '.[ray]'" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_process_backend_with_two_workers_records_what_a_serial_search_does(
    small_digits_config, episodes_of, digits_model, one_thread
):
    problem = build_problem(small_digits_config)
    serial = {name: episodes_of(problem, name, episodes) for name, episodes in (("random", 8), ("greedy", 14))}
    serial_misses = problem.evaluator.cache.misses

    problem.evaluator.cache = EvaluationCache()
    pool = EvaluationPool(problem, ParallelConfig(backend="process", workers=2))
    try:
        parallel = {name: episodes_of(problem, name, len(serial[name]), pool) for name in serial}
    finally:
        pool.close()
    assert parallel == serial
    # the workers evaluated the batches: the driver measured only what came alone (greedy's first policy, its
    # refinement one neighbour at a time)
    assert problem.evaluator.cache.misses < serial_misses - 8


def test_a_run_is_the_same_search_wherever_its_evaluations_run():
    serial = parse_config({"seed": 3})
    on_ray = serial.with_overrides(**{"parallel.backend": "ray", "parallel.workers": 4})
    assert serial.same_search(on_ray) and on_ray.same_search(serial)
    assert not serial.same_search(on_ray.with_overrides(seed=4))
