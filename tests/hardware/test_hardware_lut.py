"""Measured tables (the ``lut`` preset): HAQ's .npy, CSV and JSON rows, and every way a table can mismatch."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mpq_rl.config import HardwareConfig
from mpq_rl.errors import UserError
from mpq_rl.hardware import build_cost_table
from mpq_rl.workloads.layers import LayerTable, discover_layers

HAQ_TABLE = Path(__file__).parents[1] / "data" / "haq_mobilenetv2_imagenet100_b16_latency.npy"
PAIRS = [(w, a) for w in (2, 4, 8) for a in (4, 8)]


@pytest.fixture(scope="module")
def layers() -> LayerTable:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))
    return discover_layers(model, torch.zeros(1, 3, 8, 8))


def rows_for(layers: LayerTable) -> list[dict]:
    return [
        {"layer": name, "w_bits": w, "a_bits": a, "latency": (i + 1) * w * a, "energy": (i + 1) * (w + a)}
        for i, name in enumerate(layers.names)
        for w, a in PAIRS
    ]


def write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["layer", "w_bits", "a_bits", "latency", "energy"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def build(layers: LayerTable, table: Path, **overrides):
    return build_cost_table(layers, HardwareConfig(preset="lut", table=table, overrides=overrides))


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_rows_load_into_the_table(layers, tmp_path, suffix):
    rows = rows_for(layers)
    path = tmp_path / f"table{suffix}"
    if suffix == ".csv":
        write_csv(path, rows)
    else:
        path.write_text(json.dumps(rows))
    costs = build(layers, path)
    policy = {"0": (4, 8), "3": (2, 4)}
    assert costs.per_layer(policy, "latency").tolist() == [32, 2 * 8]
    assert costs.per_layer(policy, "energy").tolist() == [12, 2 * 6]
    assert costs.reference("latency") == 64 + 128
    assert np.isnan(costs.latency[0, costs.bit_index(3), costs.bit_index(8)])
    with pytest.raises(UserError, match=r"no latency for layer '0' at W3A8; its table measures w_bits \[2, 4, 8\]"):
        costs.total({"0": (3, 8), "3": (8, 8)}, "latency")


def test_csv_without_energy_defines_latency_only(layers, tmp_path):
    rows = [{**row, "energy": ""} for row in rows_for(layers)]
    costs = build(layers, write_csv(tmp_path / "t.csv", rows))
    assert costs.defines("latency") and not costs.defines("energy")


def test_npy_can_hold_energy(layers, tmp_path):
    path = tmp_path / "energy.npy"
    np.save(path, np.arange(2 * 8 * 8, dtype=float).reshape(2, 8, 8) + 1)
    costs = build(layers, path, npy_metric="energy")
    assert costs.defines("energy") and not costs.defines("latency")
    assert costs.reference("energy") == (1 + 63) + (65 + 63)


def test_npy_with_the_wrong_layer_count(layers):
    with pytest.raises(UserError, match="has 53 layers but the model has 2 quantizable layers"):
        build(layers, HAQ_TABLE)


def test_npy_without_eight_bits(layers, tmp_path):
    path = tmp_path / "small.npy"
    np.save(path, np.ones((2, 4, 4)))
    with pytest.raises(UserError, match=r"covers bits 1..4 only; it needs 1..8"):
        build(layers, path)


def test_csv_with_an_unknown_layer(layers, tmp_path):
    rows = rows_for(layers)
    rows[0]["layer"] = "features.0.0"
    with pytest.raises(UserError, match=r"row 1: layer 'features.0.0' is not a quantizable layer of the model"):
        build(layers, write_csv(tmp_path / "t.csv", rows))


def test_csv_missing_a_layer_or_bits(layers, tmp_path):
    rows = rows_for(layers)
    with pytest.raises(UserError, match="no row for layer '3'"):
        build(layers, write_csv(tmp_path / "a.csv", [r for r in rows if r["layer"] != "3"]))
    with pytest.raises(UserError, match="layer '3' lacks W8A8"):
        build(
            layers,
            write_csv(tmp_path / "b.csv", [r for r in rows if (r["layer"], r["w_bits"], r["a_bits"]) != ("3", 8, 8)]),
        )
    with pytest.raises(UserError, match="measured at different bits"):
        build(layers, write_csv(tmp_path / "c.csv", [r for r in rows if (r["layer"], r["w_bits"]) != ("3", 2)]))
    with pytest.raises(UserError, match=r"bits must be among \[2, 3, 4, 5, 6, 7, 8, 16, 32\], got w_bits=1"):
        build(layers, write_csv(tmp_path / "d.csv", rows + [{**rows[0], "w_bits": 1}]))
    with pytest.raises(UserError, match="measured twice"):
        build(layers, write_csv(tmp_path / "e.csv", rows + [rows[0]]))


def test_bad_files(layers, tmp_path):
    bad_header = tmp_path / "h.csv"
    bad_header.write_text("name,w,a,latency\n")
    with pytest.raises(UserError, match="missing column"):
        build(layers, bad_header)
    bad_json = tmp_path / "j.json"
    bad_json.write_text("{")
    with pytest.raises(UserError, match="not valid JSON"):
        build(layers, bad_json)
    other = tmp_path / "t.txt"
    other.write_text("")
    with pytest.raises(UserError, match="unknown format '.txt'"):
        build(layers, other)
    with pytest.raises(UserError, match="needs a measured table"):
        build_cost_table(layers, HardwareConfig(preset="lut"))
