"""ONNX export of fp and flint layers (:mod:`mpq_rl.quantization.formats`): value tables decoded inside the graph.

ONNX has no minifloat below 8 bits and no flint, so such a layer is exported as what a table lookup computes:

* **Weights** become ``<layer>.weight_codes`` (UINT8 indices into the value table, per element) with a
  ``Cast -> Gather(<layer>.weight_values) -> Mul(<layer>.weight_scale)`` chain that rebuilds the dequantized
  weights the simulator uses (per output channel scale).
* **Inputs** pass ``Div(scale) -> Greater(midpoints) -> ReduceSum -> Gather(values) -> Mul(scale)``: the index of
  the nearest table value is the number of midpoints below the scaled input (ties to the smaller, as the simulator),
  then the value times the scale. This costs one comparison per table entry and element: a faithful reference,
  not a fast kernel; a deployment decodes in hardware.

The sidecar's ``weight`` / ``input`` records give the format, bits, signedness, the value table and the scales.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from mpq_rl.errors import UserError
from mpq_rl.quantization import formats
from mpq_rl.quantization.qat import LayerScales
from mpq_rl.quantization.quant import broadcast_scale


def _float(name: str, values: Any):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(values, dtype=np.float32), name)


def add_format_layers(graph_model, scales: Mapping[str, LayerScales], records: list[dict[str, Any]]) -> dict[int, list]:
    """Rewire ``graph_model`` (in place) for every fp / flint side of the layers of ``scales`` and fill in their
    sidecar ``records``; return the new nodes to insert ahead of each node index (the caller splices them in)."""
    from onnx import TensorProto, helper, numpy_helper

    graph = graph_model.graph
    initializers = {init.name: init for init in graph.initializer}
    by_name = {record["name"]: record for record in records}
    before: dict[int, list] = {}
    for name, layer in scales.items():
        weight = layer.weight if isinstance(layer.weight, formats.TableQuantizer) else None
        quantizer = layer.input if isinstance(layer.input, formats.TableQuantizer) else None
        if weight is None and quantizer is None:
            continue
        weight_name = f"{name}.weight"
        # A layer whose weight is integer reads it from the integer exporter's DequantizeLinear.
        dequantized = {out for node in graph.node if node.name == f"{name}/weight_dequantize" for out in node.output}
        weight_inputs = {weight_name, *dequantized}
        consumers = [i for i, node in enumerate(graph.node) if set(node.input[1:2]) & weight_inputs]
        if not consumers or (weight is not None and weight_name not in initializers):
            raise UserError(f"layer {name!r}: its weight is not a constant input of a node in the exported graph")
        record = by_name[name]
        if weight is not None:
            floats = torch.from_numpy(numpy_helper.to_array(initializers[weight_name]).copy())
            codes = weight.integers(floats).to(torch.uint8).numpy()
            graph.initializer.remove(initializers[weight_name])
            graph.initializer.extend(
                [
                    numpy_helper.from_array(codes, f"{name}.weight_codes"),
                    _float(f"{name}.weight_values", weight.table.numpy()),
                    _float(f"{name}.weight_scale", broadcast_scale(weight.scale, weight.axis, floats).numpy()),
                ]
            )
            decode = [
                helper.make_node("Cast", [f"{name}.weight_codes"], [f"{name}.weight_index"], to=TensorProto.INT32),
                helper.make_node("Gather", [f"{name}.weight_values", f"{name}.weight_index"], [f"{name}.weight_unit"]),
                helper.make_node("Mul", [f"{name}.weight_unit", f"{name}.weight_scale"], [f"{name}.weight_decoded"]),
            ]
            before.setdefault(consumers[0], []).extend(decode)
            for i in consumers:
                graph.node[i].input[1] = f"{name}.weight_decoded"
            record["weight"] = {
                **formats.table_record(weight.code, signed=True),
                "axis": weight.axis,
                "codes": f"{name}.weight_codes",
                "scale": weight.scale.reshape(-1).tolist(),
            }
            record["w_bits"], record["w_format"] = formats.bits_of(weight.code), formats.format_of(weight.code)
        if quantizer is not None:
            table = quantizer.table
            graph.initializer.extend(
                [
                    _float(f"{name}.input_scale", quantizer.scale),
                    _float(f"{name}.input_midpoints", ((table[1:] + table[:-1]) * 0.5).numpy()),
                    _float(f"{name}.input_values", table.numpy()),
                    numpy_helper.from_array(np.array([-1], dtype=np.int64), f"{name}.input_last_axis"),
                ]
            )
            for call, i in enumerate(consumers):
                node = graph.node[i]
                tag = name if call == 0 else f"{name}:{call}"
                steps = [
                    ("Div", [node.input[0], f"{name}.input_scale"], "scaled", {}),
                    ("Unsqueeze", ["scaled", f"{name}.input_last_axis"], "column", {}),
                    ("Greater", ["column", f"{name}.input_midpoints"], "above", {}),
                    ("Cast", ["above"], "counts", {"to": TensorProto.INT64}),
                    ("ReduceSum", ["counts", f"{name}.input_last_axis"], "index", {"keepdims": 0}),
                    ("Gather", [f"{name}.input_values", "index"], "unit", {}),
                    ("Mul", ["unit", f"{name}.input_scale"], "decoded", {}),
                ]
                local = {"scaled", "column", "above", "counts", "index", "unit", "decoded"}
                nodes = []
                for op, inputs, output, attributes in steps:
                    inputs = [f"{tag}.input_{x}" if x in local else x for x in inputs]
                    nodes.append(
                        helper.make_node(
                            op, inputs, [f"{tag}.input_{output}"], name=f"{tag}/input_{output}", **attributes
                        )
                    )
                before.setdefault(i, []).extend(nodes)
                node.input[0] = f"{tag}.input_decoded"
            record["input"] = {**formats.table_record(quantizer.code, quantizer.signed), "scale": quantizer.scale}
            record["a_bits"] = formats.bits_of(quantizer.code)
            record["a_format"] = formats.format_of(quantizer.code)
    return before


def splice(graph, before: Mapping[int, list]) -> None:
    """Insert ``before[i]`` ahead of node ``i`` of ``graph``, for every ``i`` (indices of the graph as it is)."""
    nodes = []
    for i, node in enumerate(graph.node):
        nodes.extend(before.get(i, []))
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
