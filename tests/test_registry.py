"""One registry pattern for models, datasets, rewards, searchers and hardware presets; ``pkg.module:attr`` names
user code wherever a config names a built-in."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mpq_rl.agents import SEARCHERS, Searcher, build_searcher
from mpq_rl.agents.uniform import Uniform
from mpq_rl.config import HardwareConfig
from mpq_rl.errors import UserError
from mpq_rl.hardware import PRESETS, build_cost_table
from mpq_rl.registry import Registry
from mpq_rl.search.rewards import REWARDS, haq
from mpq_rl.workloads import DATASETS, MODELS


def test_lazy_entries_import_on_first_use_and_user_code_by_name():
    registry = Registry("thing.name", {"dumps": "json:dumps", "given": haq})
    assert list(registry) == ["dumps", "given"] and registry["given"] is haq
    assert registry.resolve("dumps") is json.dumps
    assert registry.resolve("json:loads") is json.loads
    with pytest.raises(UserError, match=r"unknown thing.name 'nope': use one of \['dumps', 'given'\], or 'pkg"):
        registry.resolve("nope")


def test_every_registry_is_one_kind():
    for registry in (MODELS, DATASETS, REWARDS, SEARCHERS, PRESETS):
        assert isinstance(registry, Registry)


class NotASearcher:
    def __init__(self, **kwargs):
        pass


def test_agents_by_module_path(tmp_path):
    searcher = build_searcher("mpq_rl.agents.uniform:Uniform")
    assert isinstance(searcher, Uniform) and searcher.resume_point(tmp_path) is None
    with pytest.raises(UserError, match="not a searcher: subclass mpq_rl.agents.Searcher"):
        build_searcher(f"{__name__}:NotASearcher")
    with pytest.raises(UserError, match="unknown agent 'nope'"):
        build_searcher("nope")
    assert issubclass(Uniform, Searcher)


def test_hardware_presets_by_module_path(digits_workload):
    by_name = build_cost_table(digits_workload.layers, HardwareConfig(preset="t4"))
    by_path = build_cost_table(digits_workload.layers, HardwareConfig(preset="mpq_rl.hardware.gpu:T4"))
    for metric in ("latency", "energy", "size", "bops"):
        np.testing.assert_array_equal(by_name.metric(metric), by_path.metric(metric))
    with pytest.raises(UserError, match="is not a cost model"):
        build_cost_table(digits_workload.layers, HardwareConfig(preset="mpq_rl.search.rewards:haq"))
