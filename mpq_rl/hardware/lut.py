"""Measured lookup tables: costs read from a file instead of computed.

Two formats, chosen by the file's suffix (the path is ``hardware.table``):

- ``.npy``: HAQ's format (mit-han-lab/haq ``lib/simulator/lookup_tables``), an array ``[layer, w_bits - 1,
  a_bits - 1]`` over the model's quantizable layers in execution order. It holds one metric, ``npy_metric``
  (latency by default; HAQ also released energy tables). Units pass through unchanged.
- ``.csv`` or ``.json``: rows with ``layer, w_bits, a_bits, latency, energy`` (energy may be empty or absent);
  ``layer`` is the fully qualified module name. JSON is a list of such objects.

A table defines only what it measured: other bits, and a metric it lacks, are NaN in the cost table and asking for
them is a :class:`UserError`. Every layer must be measured at the same (w_bits, a_bits) pairs, W8A8 included (the
reference of every budget).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mpq_rl.errors import UserError
from mpq_rl.hardware.roofline import LayerCosts
from mpq_rl.hardware.shapes import BITS, LayerShapes

NPY_METRICS = ("latency", "energy")
COLUMNS = ("layer", "w_bits", "a_bits", "latency")


@dataclass(frozen=True)
class LookupTable:
    """Costs from a measured table file (``hardware.table``)."""

    table: Path | None = None
    npy_metric: str = "latency"

    def validate(self) -> None:
        if self.npy_metric not in NPY_METRICS:
            raise UserError(
                f"hardware.overrides.npy_metric must be one of {list(NPY_METRICS)}, got {self.npy_metric!r}"
            )

    def cost(self, shapes: LayerShapes, w_bits: np.ndarray, a_bits: np.ndarray) -> LayerCosts:
        if self.table is None:
            raise UserError(
                "preset 'lut' needs a measured table: set hardware.table to a .npy file (HAQ's format) "
                "or a .csv/.json file with columns layer, w_bits, a_bits, latency, energy"
            )
        path = Path(self.table)
        if not path.is_file():
            raise UserError(f"hardware.table file {str(path)!r} does not exist")
        w_list = [int(b) for b in np.ravel(w_bits)]
        a_list = [int(b) for b in np.ravel(a_bits)]
        suffix = path.suffix.lower()
        if suffix == ".npy":
            latency, energy = self._from_npy(path, shapes, w_list, a_list)
        elif suffix in (".csv", ".json"):
            latency, energy = _from_rows(path, _read_rows(path), shapes, w_list, a_list)
        else:
            raise UserError(f"hardware.table {path}: unknown format {suffix!r}; use .npy, .csv or .json")
        return LayerCosts(latency, energy, np.zeros(latency.shape, dtype=bool), table_units=True)

    def _from_npy(
        self, path: Path, shapes: LayerShapes, w_list: list[int], a_list: list[int]
    ) -> tuple[np.ndarray, np.ndarray]:
        try:
            data = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise UserError(f"hardware.table {path}: not a readable .npy array ({exc})") from None
        if data.ndim != 3:
            raise UserError(f"hardware.table {path}: expected [layer, w_bits - 1, a_bits - 1], got shape {data.shape}")
        if data.shape[0] != len(shapes):
            raise UserError(
                f"hardware.table {path} has {data.shape[0]} layers but the model has {len(shapes)} quantizable "
                "layers: use the table measured for this model (rows follow the layers' execution order)"
            )
        if min(data.shape[1:]) < 8:
            raise UserError(
                f"hardware.table {path} covers bits 1..{min(data.shape[1:])} only; it needs 1..8 "
                "(W8A8 is the reference of every budget)"
            )
        measured = np.full((len(shapes), len(w_list), len(a_list)), np.nan)
        for i, w in enumerate(w_list):
            for j, a in enumerate(a_list):
                if w <= data.shape[1] and a <= data.shape[2]:
                    measured[:, i, j] = data[:, w - 1, a - 1]
        missing = np.full(measured.shape, np.nan)
        return (measured, missing) if self.npy_metric == "latency" else (missing, measured)


def _read_rows(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise UserError(f"hardware.table {path}: cannot read ({exc})") from None
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        columns = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in COLUMNS if c not in columns]
        if missing:
            raise UserError(
                f"hardware.table {path}: missing column(s) {', '.join(missing)}; "
                "the header must be layer,w_bits,a_bits,latency,energy"
            )
        return [{k.strip(): v for k, v in row.items() if k is not None} for row in reader]
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"hardware.table {path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise UserError(f"hardware.table {path}: expected a JSON list of {{layer, w_bits, a_bits, latency, energy}}")
    return rows


def _number(value: Any) -> float:
    if value is None or (isinstance(value, str) and not value.strip()):
        return float("nan")
    return float(value)


def _from_rows(
    path: Path, rows: list[dict[str, Any]], shapes: LayerShapes, w_list: list[int], a_list: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    index = {name: i for i, name in enumerate(shapes.names)}
    values: dict[tuple[int, int, int], tuple[float, float]] = {}
    for number, row in enumerate(rows, start=1):
        where = f"hardware.table {path} row {number}"
        name = str(row.get("layer", "")).strip()
        if name not in index:
            shown = ", ".join(list(index)[:6])
            raise UserError(
                f"{where}: layer {name!r} is not a quantizable layer of the model; "
                f"use fully qualified module names such as {shown}, ..."
            )
        try:
            w, a = int(row["w_bits"]), int(row["a_bits"])
            measured = (_number(row["latency"]), _number(row.get("energy")))
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{where}: w_bits and a_bits must be integers, latency and energy numbers") from None
        if w not in BITS or a not in BITS:
            raise UserError(f"{where}: bits must be among {list(BITS)}, got w_bits={w}, a_bits={a}")
        key = (index[name], w, a)
        if key in values:
            raise UserError(f"{where}: layer {name!r} at W{w}A{a} is measured twice")
        values[key] = measured
    pairs: list[set[tuple[int, int]]] = [set() for _ in shapes.names]
    for layer, w, a in values:
        pairs[layer].add((w, a))
    for name, measured_pairs in zip(shapes.names, pairs, strict=True):
        if not measured_pairs:
            raise UserError(f"hardware.table {path} has no row for layer {name!r}: measure every quantizable layer")
        if (8, 8) not in measured_pairs:
            raise UserError(f"hardware.table {path}: layer {name!r} lacks W8A8, the reference of every budget")
        if measured_pairs != pairs[0]:
            gap = sorted(pairs[0] ^ measured_pairs)[0]
            raise UserError(
                f"hardware.table {path}: layers {shapes.names[0]!r} and {name!r} are measured at different bits "
                f"(W{gap[0]}A{gap[1]} is in one only); measure every layer at the same bits"
            )
    latency = np.full((len(shapes), len(w_list), len(a_list)), np.nan)
    energy = latency.copy()
    w_pos = {b: i for i, b in enumerate(w_list)}
    a_pos = {b: i for i, b in enumerate(a_list)}
    for (layer, w, a), (lat, en) in values.items():
        if w in w_pos and a in a_pos:
            latency[layer, w_pos[w], a_pos[a]] = lat
            energy[layer, w_pos[w], a_pos[a]] = en
    return latency, energy
