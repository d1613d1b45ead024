"""ONNX export of a quantized model: the FP32 graph with QuantizeLinear/DequantizeLinear at each quantized layer.

The model is traced with ``torch.onnx.export`` (the TorchScript exporter, opset 20, BatchNorm kept as its own node
so the graph computes what the simulator computes), converted to opset 21, and rewritten with the onnx helper API:

* **Weights** of a layer at ``b`` bits become a constant integer initializer ``<layer>.weight_quantized`` (the
  simulator's own integers, symmetric narrow range ``[-(2^(b-1) - 1), 2^(b-1) - 1]``) with a per-output-channel
  ``DequantizeLinear`` (axis 0, float32 ``<layer>.weight_scale``, zero point 0) feeding the layer.
* **Inputs** of a layer at ``b`` bits pass ``QuantizeLinear -> DequantizeLinear`` (per tensor, float32 scale and
  the calibrated zero point, levels ``[0, 2^b - 1]``).
* **Types**: 4 bits use opset 21's native INT4 (weights) / UINT4 (inputs); 8 bits INT8 / UINT8. Other bit-widths
  (2, 3, 5, 6, 7) have no ONNX type: they are stored in INT8 / UINT8, weights holding only values of the ``b``-bit
  range and inputs passing a ``Clip`` to the float range of their ``b``-bit levels, ``[(0 - z) * s, (2^b - 1 - z)
  * s]``, before ``QuantizeLinear``. Layers at 16/32 bits are left in floating point.

A JSON sidecar (``<output>.json``) lists every layer's bits, types, levels, scales and zero points. Layers in fp or
flint (:mod:`mpq_rl.formats`) have no ONNX type: :mod:`mpq_rl.format_export` stores their codes and value tables
and decodes them inside the graph.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mpq_rl.errors import UserError
from mpq_rl.evaluator import calibrated_simulator
from mpq_rl.finetune import load_finetuned
from mpq_rl.format_export import FormatLayer, add_format_layers, format_layers, integer_view
from mpq_rl.io import atomic_write_bytes, atomic_write_json
from mpq_rl.policy import BitPair
from mpq_rl.qat import LayerScales, calibrated_scales
from mpq_rl.workload import Workload

OPSET = 21
"""The first opset with INT4/UINT4 tensors (and QuantizeLinear/DequantizeLinear on them)."""
TRACE_OPSET = 20
"""The newest opset the TorchScript exporter writes; the graph is converted to :data:`OPSET` afterwards."""
SIDECAR_FORMAT = "mpq_rl.onnx_quantization/1"
INPUT_NAME = "input"
OUTPUT_NAME = "output"


def _types():
    from onnx import TensorProto

    signed = {4: TensorProto.INT4, 8: TensorProto.INT8}
    unsigned = {4: TensorProto.UINT4, 8: TensorProto.UINT8}
    return signed, unsigned


def _type_name(data_type: int) -> str:
    from onnx import TensorProto

    return TensorProto.DataType.Name(data_type).lower()


def _integer_tensor(name: str, data_type: int, values: np.ndarray):
    from onnx import helper

    return helper.make_tensor(name, data_type, list(values.shape), values.astype(np.int64).ravel().tolist())


def _float_tensor(name: str, values: np.ndarray):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(values, dtype=np.float32), name)


def weight_integers(weight: torch.Tensor, scale: torch.Tensor, q_max: int) -> torch.Tensor:
    """The integers the simulator's fused fake-quantize kernel puts on each weight (symmetric, per channel)."""
    zero = torch.zeros(scale.numel(), dtype=torch.int32)
    fake = torch.fake_quantize_per_channel_affine(weight.float(), scale.float(), zero, 0, -q_max, q_max)
    shape = (-1,) + (1,) * (weight.dim() - 1)
    return torch.round(fake / scale.float().reshape(shape)).to(torch.int64)


def trace_onnx(model: nn.Module, example: torch.Tensor):
    """The FP32 model as an opset-21 ONNX graph, initializers named by parameter (``<layer>.weight``)."""
    import onnx
    from onnx import version_converter

    if not isinstance(example, torch.Tensor):
        raise UserError("ONNX export supports models that take one tensor input (got a batch of dicts or tuples)")
    buffer = io.BytesIO()
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter announces its deprecation on every call
            torch.onnx.export(
                model,
                (example,),
                buffer,
                dynamo=False,
                opset_version=TRACE_OPSET,
                training=torch.onnx.TrainingMode.PRESERVE,  # EVAL would fold BatchNorm into the float weights
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            )
    finally:
        model.train(was_training)
    return version_converter.convert_version(onnx.load_from_string(buffer.getvalue()), OPSET)


def quantize_graph(graph_model, scales: Mapping[str, LayerScales]) -> list[dict[str, Any]]:
    """Insert Q/DQ for every layer of ``scales`` into ``graph_model`` (in place); return the sidecar's layer list."""
    from onnx import helper, numpy_helper

    signed, unsigned = _types()
    graph = graph_model.graph
    initializers = {init.name: init for init in graph.initializer}
    before: dict[int, list] = {}  # new nodes to insert ahead of the node with this index
    described = []
    for name, s in scales.items():
        weight_name = f"{name}.weight"
        consumers = [i for i, node in enumerate(graph.node) if weight_name in node.input[1:2]]
        if weight_name not in initializers or not consumers:
            raise UserError(f"layer {name!r}: its weight is not a constant input of a node in the exported graph")
        record: dict[str, Any] = {"name": name, "w_bits": s.w_bits, "a_bits": s.a_bits, "weight": None, "input": None}
        if s.weight_scale is not None:
            weight = torch.from_numpy(numpy_helper.to_array(initializers[weight_name]).copy())
            data_type = signed.get(s.w_bits, signed[8])
            levels = weight_integers(weight, s.weight_scale, s.weight_q_max).numpy()
            scale = s.weight_scale.float().numpy()
            graph.initializer.remove(initializers[weight_name])
            graph.initializer.extend(
                [
                    _integer_tensor(f"{name}.weight_quantized", data_type, levels),
                    _float_tensor(f"{name}.weight_scale", scale),
                    _integer_tensor(f"{name}.weight_zero_point", data_type, np.zeros(scale.shape, dtype=np.int64)),
                ]
            )
            dequantize = helper.make_node(
                "DequantizeLinear",
                [f"{name}.weight_quantized", f"{name}.weight_scale", f"{name}.weight_zero_point"],
                [f"{name}.weight_dequantized"],
                name=f"{name}/weight_dequantize",
                axis=0,
            )
            before.setdefault(consumers[0], []).append(dequantize)
            for i in consumers:
                graph.node[i].input[1] = f"{name}.weight_dequantized"
            record["weight"] = {
                "type": _type_name(data_type),
                "axis": 0,
                "q_min": -s.weight_q_max,
                "q_max": s.weight_q_max,
                "scale": scale.tolist(),
                "zero_point": 0,
            }
        if s.input_scale is not None:
            data_type = unsigned.get(s.a_bits, unsigned[8])
            scale = np.float32(s.input_scale)
            clip = None
            if s.a_bits not in unsigned:
                clip = [
                    float(np.float32(-s.input_zero_point) * scale),
                    float(np.float32(s.input_q_max - s.input_zero_point) * scale),
                ]
            graph.initializer.extend(
                [
                    _float_tensor(f"{name}.input_scale", scale),
                    _integer_tensor(f"{name}.input_zero_point", data_type, np.array(s.input_zero_point)),
                ]
            )
            if clip is not None:
                graph.initializer.extend(
                    [_float_tensor(f"{name}.input_clip_min", clip[0]), _float_tensor(f"{name}.input_clip_max", clip[1])]
                )
            for call, i in enumerate(consumers):
                node = graph.node[i]
                tag = name if call == 0 else f"{name}:{call}"
                source = node.input[0]
                new_nodes = []
                if clip is not None:
                    new_nodes.append(
                        helper.make_node(
                            "Clip",
                            [source, f"{name}.input_clip_min", f"{name}.input_clip_max"],
                            [f"{tag}.input_clipped"],
                            name=f"{tag}/input_clip",
                        )
                    )
                    source = f"{tag}.input_clipped"
                new_nodes += [
                    helper.make_node(
                        "QuantizeLinear",
                        [source, f"{name}.input_scale", f"{name}.input_zero_point"],
                        [f"{tag}.input_quantized"],
                        name=f"{tag}/input_quantize",
                    ),
                    helper.make_node(
                        "DequantizeLinear",
                        [f"{tag}.input_quantized", f"{name}.input_scale", f"{name}.input_zero_point"],
                        [f"{tag}.input_dequantized"],
                        name=f"{tag}/input_dequantize",
                    ),
                ]
                before.setdefault(i, []).extend(new_nodes)
                node.input[0] = f"{tag}.input_dequantized"
            record["input"] = {
                "type": _type_name(data_type),
                "q_min": 0,
                "q_max": s.input_q_max,
                "scale": float(scale),
                "zero_point": s.input_zero_point,
                "clip": clip,
            }
        described.append(record)
    splice(graph, before)
    return described


def splice(graph, before: Mapping[int, list]) -> None:
    """Insert ``before[i]`` ahead of node ``i`` of ``graph``, for every ``i`` (indices of the graph as it is)."""
    nodes = []
    for i, node in enumerate(graph.node):
        nodes.extend(before.get(i, []))
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)


def export_onnx(
    model: nn.Module,
    example: torch.Tensor,
    scales: Mapping[str, LayerScales],
    path: str | Path,
    source: str,
    tables: Mapping[str, FormatLayer] | None = None,
) -> dict[str, Any]:
    """Write the quantized ONNX graph to ``path`` and its sidecar to ``path`` + ``.json``; return the sidecar.

    ``source`` says where the scales came from (``"calibrated"`` or ``"learned"``); it is recorded in the sidecar.
    ``tables`` holds the fp / flint sides of layers (:mod:`mpq_rl.format_export`), whose ``scales`` leave those
    sides in floating point.
    """
    import onnx

    graph_model = trace_onnx(model, example)
    layers = quantize_graph(graph_model, scales)
    splice(graph_model.graph, add_format_layers(graph_model, tables or {}, layers))
    graph_model.producer_name = "mpq_rl"
    onnx.checker.check_model(graph_model, full_check=True)
    path = Path(path)
    atomic_write_bytes(path, graph_model.SerializeToString())
    sidecar = {
        "format": SIDECAR_FORMAT,
        "model": path.name,
        "opset": OPSET,
        "input": INPUT_NAME,
        "output": OUTPUT_NAME,
        "scales": source,
        "layers": layers,
    }
    atomic_write_json(sidecar_path(path), sidecar)
    return sidecar


def sidecar_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".json")


def export_policy(
    workload: Workload, policy: Mapping[str, BitPair], output: str | Path, weights: str | Path | None = None
) -> dict[str, Any]:
    """``mpq-rl export``: ``policy`` on ``workload.model`` (or finetuned ``weights``) as ONNX plus sidecar.

    Finetuned weights come with their learned LSQ scales when ``lsq_scales.safetensors`` lies beside them; any
    other weights are quantized with ranges calibrated here on the calibration split, as the simulator would.
    """
    learned = load_finetuned(workload.model, weights) if weights is not None else None
    if learned is not None:
        for name, bits in policy.items():
            have = (learned[name].w_bits, learned[name].a_bits) if name in learned else None
            if have != tuple(bits):
                raise UserError(
                    f"layer {name!r}: the learned scales next to {str(weights)!r} are for bits {have}, the policy "
                    f"gives {tuple(bits)}: export with the policy the weights were finetuned with"
                )
        scales, source, tables = {name: learned[name] for name in policy}, "learned", {}
    else:
        simulator = calibrated_simulator(workload)
        try:
            scales, source = calibrated_scales(simulator, integer_view(policy)), "calibrated"
            tables = format_layers(simulator, policy)
        finally:
            simulator.detach()
    return export_onnx(workload.model, workload.example, scales, output, source, tables)
