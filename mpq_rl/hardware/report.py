"""A per-layer cost report of one policy on one hardware preset, as a dict (JSON-ready) and as a text table."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mpq_rl.hardware.cost_table import METRICS, CostTable
from mpq_rl.quantization.formats import label
from mpq_rl.workloads.layers import LayerTable

TOTAL_KEYS = {"latency": "latency", "energy": "energy", "size": "size_bits", "bops": "bops"}
"""Metric name -> key of its value in a report's rows and totals."""


def _number(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def cost_report(
    layers: LayerTable, costs: CostTable, policy: Mapping[str, Sequence[int]], metric: str = "latency"
) -> dict[str, Any]:
    """Per-layer and total costs of ``policy``, totals relative to W8A8; ``share`` is each layer's part of ``metric``.

    Values a measured table lacks (e.g. energy of a latency-only table) are None.
    """
    values = {m: costs.lookup(policy, m) for m in METRICS}
    reference = costs.reference_policy()
    reference_values = {m: costs.lookup(reference, m) for m in METRICS}
    memory_bound = costs.memory_bound(policy)
    shares = values[metric] / values[metric].sum()
    rows = []
    for i, layer in enumerate(layers):
        w, a = policy[layer.name]
        row: dict[str, Any] = {
            "name": layer.name,
            "kind": layer.kind,
            "macs": int(layer.macs),
            "params": int(layer.params),
            "w_bits": int(w),
            "a_bits": int(a),
        }
        row.update({TOTAL_KEYS[m]: _number(values[m][i]) for m in METRICS})
        row["share"] = _number(shares[i])
        row["memory_bound"] = bool(memory_bound[i])
        rows.append(row)
    total: dict[str, Any] = {TOTAL_KEYS[m]: _number(np.sum(values[m])) for m in METRICS}
    ref_total = {TOTAL_KEYS[m]: _number(np.sum(reference_values[m])) for m in METRICS}
    for m in METRICS:
        key = TOTAL_KEYS[m]
        ok = total[key] is not None and ref_total[key]
        total[f"{m}_ratio"] = total[key] / ref_total[key] if ok else None
    units = "table" if costs.table_units else "SI"
    return {
        "layers": rows,
        "total": total,
        "reference": ref_total,
        "reference_bits": list(costs.reference_bits),
        "units": units,
    }


_COLUMNS = (
    ("MACs(M)", 9),
    ("params(K)", 10),
    ("W/A", 6),
    ("latency", 11),
    ("energy", 11),
    ("size(KB)", 9),
    ("BOPs(M)", 10),
    ("share", 7),
    ("mem", 4),
)


def _fmt(value: float | None, scale: float, width: int, digits: int = 2) -> str:
    """``value * scale`` right-aligned in ``width`` columns; 3 significant digits when too wide (own-unit tables)."""
    if value is None:
        return f"{'-':>{width}}"
    text = f"{value * scale:.{digits}f}"
    return f"{text if len(text) < width else f'{value * scale:.3g}':>{width}}"


def _cost_cells(entry: Mapping[str, Any], scale: float) -> str:
    return (
        _fmt(entry["latency"], scale, 11)
        + _fmt(entry["energy"], scale, 11)
        + _fmt(entry["size_bits"], 1 / 8 / 1024, 9)
        + _fmt(entry["bops"], 1e-6, 10, 1)
    )


def render_cost_report(report: Mapping[str, Any], metric: str = "latency") -> str:
    """A fixed-width table of ``report``: one row per layer, then totals, the W8A8 reference and their ratio.

    Latency and energy are for one batch, in microseconds and microjoules, or in a measured table's own units
    (its numbers unchanged); ``share`` is each layer's part of ``metric``; ``*`` marks memory-bound.
    """
    table = report.get("units") == "table"
    scale = 1.0 if table else 1e6
    titles = ("lat(table)", "en(table)") if table else ("lat(us)", "energy(uJ)")
    key = TOTAL_KEYS[metric]
    rows = report["layers"]
    name_width = min(max([len(r["name"]) for r in rows] + [5]), 40)
    total_metric = report["total"][key]
    units = {"latency": titles[0], "energy": titles[1]}
    header = f"{'layer':<{name_width}} {'kind':<10}" + "".join(
        f"{units.get(title, title):>{width}}" for title, width in _COLUMNS
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        name = r["name"] if len(r["name"]) <= name_width else "..." + r["name"][-(name_width - 3) :]
        share = r[key] / total_metric if r[key] is not None and total_metric else None
        lines.append(
            f"{name:<{name_width}} {r['kind']:<10}"
            + f"{r['macs'] / 1e6:>9.2f}{r['params'] / 1e3:>10.1f}{label(r['w_bits']) + '/' + label(r['a_bits']):>6}"
            + _cost_cells(r, scale)
            + _fmt(share, 100, 6, 1)
            + "%"
            + f"{'*' if r['memory_bound'] else '':>4}"
        )
    lines.append("-" * len(header))
    pad = " " * (name_width + 1 + 10 + 9 + 10 + 6)
    lines.append(f"{'total':<{len(pad)}}" + _cost_cells(report["total"], scale))
    reference = "W{}A{}".format(*report["reference_bits"])
    lines.append(f"{reference + ' reference':<{len(pad)}}" + _cost_cells(report["reference"], scale))
    ratios = "".join(
        _fmt(report["total"][f"{m}_ratio"], 1, width, 4) for m, width in zip(METRICS, (11, 11, 9, 10), strict=True)
    )
    lines.append(f"{'ratio vs ' + reference:<{len(pad)}}" + ratios)
    unit_note = "in the measured table's own units" if table else "per batch"
    lines.append(f"share: part of total {metric}; * = memory-bound; latency and energy {unit_note}")
    return "\n".join(lines)
