"""The per-layer cost report: its dict form (what ``mpq-rl cost --json`` prints) and its text table."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from mpq_rl.config import HardwareConfig
from mpq_rl.hardware import build_cost_table, cost_report, render_cost_report
from mpq_rl.workloads.layers import discover_layers

ROW_KEYS = {"name", "kind", "macs", "params", "w_bits", "a_bits", "latency", "energy", "size_bits", "bops", "share",
            "memory_bound"}  # fmt: skip


@pytest.fixture(scope="module")
def layers():
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.Flatten(), nn.Linear(16 * 64, 10)
    )
    return discover_layers(model, torch.zeros(1, 3, 8, 8))


def test_report_rows_totals_and_ratios(layers):
    costs = build_cost_table(layers, HardwareConfig(preset="bitfusion"))
    policy = {"0": (4, 8), "1": (8, 4), "3": (2, 2)}
    report = cost_report(layers, costs, policy)
    assert set(report) == {"layers", "total", "reference", "reference_bits", "units"} and report["units"] == "SI"
    assert report["reference_bits"] == [8, 8]
    assert [set(row) for row in report["layers"]] == [ROW_KEYS] * 3
    assert [row["name"] for row in report["layers"]] == ["0", "1", "3"]
    assert report["layers"][1]["kind"] == "conv2d" and report["layers"][2]["w_bits"] == 2
    assert sum(row["share"] for row in report["layers"]) == pytest.approx(1.0)
    total, reference = report["total"], report["reference"]
    assert set(reference) == {"latency", "energy", "size_bits", "bops"}
    assert total["latency"] == pytest.approx(costs.total(policy, "latency"))
    assert total["size_bits"] == costs.total(policy, "size")
    for metric, key in [("latency", "latency"), ("energy", "energy"), ("size", "size_bits"), ("bops", "bops")]:
        assert total[f"{metric}_ratio"] == pytest.approx(total[key] / reference[key])
        assert total[f"{metric}_ratio"] < 1
    json.dumps(report)  # JSON-ready


def test_rendered_table(layers):
    costs = build_cost_table(layers, HardwareConfig(preset="bismo_ultra96"))
    policy = {"0": (8, 8), "1": (8, 8), "3": (8, 8)}
    text = render_cost_report(cost_report(layers, costs, policy), "energy")
    lines = text.splitlines()
    assert lines[0].split() == ["layer", "kind", "MACs(M)", "params(K)", "W/A", "lat(us)", "energy(uJ)", "size(KB)",
                                "BOPs(M)", "share", "mem"]  # fmt: skip
    assert len({len(line) for line in lines[:6]} - {len(lines[0])}) <= 1  # fixed width rows
    assert "ratio vs W8A8" in text and "1.0000" in text
    assert "share: part of total energy" in text
    flagged = [line for line in lines[2:5] if line.rstrip().endswith("*")]
    assert len(flagged) == int(costs.memory_bound(policy).sum())


def test_report_of_a_latency_only_table_has_no_energy(tmp_path, layers):
    path = tmp_path / "t.csv"
    rows = ["layer,w_bits,a_bits,latency,energy"] + [f"{n},8,8,{i + 1},," for i, n in enumerate(layers.names)]
    path.write_text("\n".join(rows).replace(",,", ","))
    costs = build_cost_table(layers, HardwareConfig(preset="lut", table=path))
    report = cost_report(layers, costs, {n: (8, 8) for n in layers.names})
    assert report["total"]["energy"] is None and report["total"]["latency_ratio"] == 1.0
    text = render_cost_report(report, "latency")
    assert " - " in text
    # the table's own numbers (1, 2, 3 per layer), labelled as such: not scaled to microseconds
    assert text.splitlines()[0].split()[5:7] == ["lat(table)", "en(table)"]
    assert text.splitlines()[2].split()[5] == "1.00" and report["units"] == "table"
    assert "in the measured table's own units" in text
