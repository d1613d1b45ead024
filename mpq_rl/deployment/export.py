"""ONNX export of a quantized model: QuantizeLinear/DequantizeLinear placed in the graph by the model itself.

While the model is traced, every quantized layer runs through two markers (:class:`_Marker` of kind ``Weight`` on
its weight, a parametrization, and of kind ``Input`` on its input, a forward pre-hook). In PyTorch they compute the
simulator's fake quantization with the layer's :class:`~mpq_rl.quantization.quant.QuantParams`; in the exported graph
each is a
placeholder node (domain ``mpq_rl``) at exactly the place the quantizer acts, whatever the exporter makes of the
surrounding layer (Gemm, MatMul on a 3-D input, Conv, attention projections, a module called several times).
The placeholders are then replaced:

* **Weights** of a layer at ``b`` bits become a constant integer initializer ``<layer>.weight_quantized`` (the
  simulator's own integers, symmetric narrow range ``[-(2^(b-1) - 1), 2^(b-1) - 1]``) with a per-output-channel
  ``DequantizeLinear`` (axis 0, float32 ``<layer>.weight_scale``, zero point 0); the float weight is gone.
* **Inputs** of a layer at ``b`` bits pass ``QuantizeLinear -> DequantizeLinear`` (per tensor, float32 scale and
  the calibrated zero point, levels ``[0, 2^b - 1]``), once per call.
* **Types**: weights are stored in INT8 and inputs in UINT8 at every bit-width from 2 to 8, the containers
  onnxruntime's integer kernels take (``QLinearConv``, ``QGemm``, ``MatMulIntegerToFloat``); a weight below 8 bits
  holds only values of its ``b``-bit range, and an input below 8 bits passes ``QuantizeLinear -> Clip(q_min,
  q_max) -> DequantizeLinear``, the clip on the 8-bit integers themselves, which is exactly the ``b``-bit quantizer
  (both share scale and zero point; the 8-bit range contains the ``b``-bit one). The exception is a 4-bit linear
  weight with a float input, laid out for ``MatMulNBits`` (:mod:`mpq_rl.deployment.export_int4`) in opset 21's INT4.
  Layers at 16/32 bits are left in floating point.
* **BatchNorm** after a quantized layer is folded into the layer's per-channel weight scale and a bias
  (:mod:`mpq_rl.deployment.bn_fold`; the integers stay), so that onnxruntime sees ``DQ -> Conv -> Q`` and fuses it.

The exporter is the TorchScript one (``dynamo=False``, opset 20, then converted to 21): PyTorch 2.14 recommends
and defaults to the dynamo exporter, but that needs ``onnxscript``, which the pinned environment does not carry,
while the TorchScript exporter traces dict inputs (MiniLM) and keeps BatchNorm as its own node. Only the markers'
``symbolic`` methods are exporter-specific. A JSON sidecar (``<output>.json``) lists every layer's bits, types,
levels, scales and zero points.
"""

from __future__ import annotations

import inspect
import io
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from mpq_rl.deployment.bn_fold import fold_batchnorm
from mpq_rl.deployment.export_check import check_export, require_agreement
from mpq_rl.deployment.export_int4 import transpose_for_matmul_nbits
from mpq_rl.deployment.finetuned_weights import learned_scales
from mpq_rl.deployment.format_export import add_format_layers, splice
from mpq_rl.deployment.kernels import (
    float_reasons,
    float_weights_for_float_kernels,
    layer_kernels,
    layer_kinds,
    optimized_graph,
)
from mpq_rl.errors import UserError
from mpq_rl.io import atomic_write_bytes, atomic_write_json
from mpq_rl.quantization.policy import BitPair
from mpq_rl.quantization.qat import LayerScales, LsqAttachment, calibrated_scales
from mpq_rl.quantization.quant import QuantParams
from mpq_rl.search.evaluator import calibrated_simulator
from mpq_rl.workloads.data import Batches
from mpq_rl.workloads.layers import layer_modules
from mpq_rl.workloads.model_io import model_outputs
from mpq_rl.workloads.workload import Workload

OPSET = 21
"""The first opset with INT4/UINT4 tensors (and QuantizeLinear/DequantizeLinear on them)."""
TRACE_OPSET = 20
"""The newest opset the TorchScript exporter writes; the graph is converted to :data:`OPSET` afterwards."""
SIDECAR_FORMAT = "mpq_rl.onnx_quantization/2"
INPUT_NAME = "input"
OUTPUT_NAME = "output"
MARKER_DOMAIN = "mpq_rl"
MIN_AGREEMENT = 0.99
"""The least top-1 agreement (or cosine) of onnxruntime with the simulation that ``export`` accepts."""


def _numpy_types() -> dict[int, Any]:
    import ml_dtypes
    from onnx import TensorProto

    return {
        TensorProto.INT4: ml_dtypes.int4,
        TensorProto.UINT4: ml_dtypes.uint4,
        TensorProto.INT8: np.int8,
        TensorProto.UINT8: np.uint8,
    }


def _type_name(data_type: int) -> str:
    from onnx import TensorProto

    return TensorProto.DataType.Name(data_type).lower()


def _integer_tensor(name: str, data_type: int, values: np.ndarray):
    """An initializer stored packed in its raw bytes (two 4-bit values per byte), not as 32-bit varints."""
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(values).astype(_numpy_types()[data_type]), name)


def _float_tensor(name: str, values: np.ndarray):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(values, dtype=np.float32), name)


class _Marker(torch.autograd.Function):
    """The simulator's fake quantization of a layer's weight (``kind`` Weight) or input (``kind`` Input) in
    PyTorch; a ``mpq_rl::Weight`` or ``mpq_rl::Input`` placeholder in the graph."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, kind: str, layer: str, s: LayerScales) -> torch.Tensor:
        return (s.weight if kind == "Weight" else s.input).fake_quantize(x)

    @staticmethod
    def symbolic(g, x, kind: str, layer: str, s: LayerScales):
        out = g.op(f"{MARKER_DOMAIN}::{kind}", x, layer_s=layer)
        out.setType(x.type())
        return out


class _QuantizedWeight(nn.Module):
    """The weight parametrization of one layer for the life of one export: computed once, however often the weight
    is read (a module called several times then has one weight marker in the graph; the tracer fails on two)."""

    def __init__(self, layer: str, scales: LayerScales) -> None:
        super().__init__()
        self.layer, self.scales = layer, scales
        self.quantized: torch.Tensor | None = None

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.quantized is None:
            self.quantized = _Marker.apply(weight, "Weight", self.layer, self.scales)
        return self.quantized


@contextmanager
def quantized_for_export(model: nn.Module, scales: Mapping[str, LayerScales]) -> Iterator[nn.Module]:
    """``model`` with the markers on every integer side of the layers of ``scales`` for the duration of the block,
    in eval mode (fp / flint sides are left to :mod:`mpq_rl.deployment.format_export`)."""
    modules = layer_modules(model)
    unknown = [name for name in scales if name not in modules]
    if unknown:
        raise UserError(f"the model has no layer named {unknown[0]!r}: check the policy's layer names")
    handles, parametrized = [], []
    was_training = model.training
    model.eval()
    try:
        for name, s in scales.items():
            module = modules[name]
            if isinstance(s.weight, QuantParams):
                parametrize.register_parametrization(module, "weight", _QuantizedWeight(name, s), unsafe=True)
                parametrized.append(module)
            if isinstance(s.input, QuantParams):

                def hook(module: nn.Module, args: tuple, name: str = name, s: LayerScales = s) -> tuple:
                    return (_Marker.apply(args[0], "Input", name, s), *args[1:])

                handles.append(module.register_forward_pre_hook(hook))
        yield model
    finally:
        for handle in handles:
            handle.remove()
        for module in parametrized:
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
        model.train(was_training)


def input_names(model: nn.Module, example: Any) -> list[str]:
    """The graph's input names: ``input`` for one tensor, the forward's argument names for a dict batch."""
    if isinstance(example, torch.Tensor):
        return [INPUT_NAME]
    if isinstance(example, dict):
        order = [name for name in inspect.signature(model.forward).parameters if name in example]
        if len(order) == len(example):
            return order
    raise UserError(
        "ONNX export takes a model whose batch is one tensor or a dict of tensors named like the forward's "
        f"arguments (got {type(example).__name__})"
    )


def trace_onnx(model: nn.Module, example: Any, markers: bool = True):
    """The model (``markers``: with markers attached) as an opset-20 ONNX graph from the TorchScript exporter."""
    import onnx

    names = input_names(model, example)
    args = (example,) if isinstance(example, torch.Tensor) else ({name: example[name] for name in names},)
    buffer = io.BytesIO()
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter announces its deprecation on every call
            torch.onnx.export(
                model,
                args,
                buffer,
                dynamo=False,
                opset_version=TRACE_OPSET,
                training=torch.onnx.TrainingMode.PRESERVE,  # EVAL would fold BatchNorm into the float weights
                input_names=names,
                output_names=[OUTPUT_NAME],
                dynamic_axes={name: {0: "batch"} for name in [*names, OUTPUT_NAME]},
                custom_opsets={MARKER_DOMAIN: 1} if markers else None,
            )
    finally:
        model.train(was_training)
    return onnx.load_from_string(buffer.getvalue())


def _weight_nodes(name: str, s: LayerScales, weight: torch.Tensor, output: str) -> tuple[list, list, dict]:
    """Initializers and the ``DequantizeLinear`` that produce the quantized weight of layer ``name`` as ``output``."""
    from onnx import TensorProto, helper

    data_type = TensorProto.INT8
    quantizer = s.weight
    levels = quantizer.integers(weight.detach().cpu()).numpy()
    scale = quantizer.scale.float().numpy()
    initializers = [
        _integer_tensor(f"{name}.weight_quantized", data_type, levels),
        _float_tensor(f"{name}.weight_scale", scale),
        _integer_tensor(f"{name}.weight_zero_point", data_type, np.zeros(scale.shape, dtype=np.int64)),
    ]
    dequantize = helper.make_node(
        "DequantizeLinear",
        [f"{name}.weight_quantized", f"{name}.weight_scale", f"{name}.weight_zero_point"],
        [output],
        name=f"{name}/weight_dequantize",
        axis=0,
    )
    record = {
        "type": _type_name(data_type),
        "axis": 0,
        "q_min": quantizer.q_min,
        "q_max": quantizer.q_max,
        "scale": scale.tolist(),
        "zero_point": 0,
    }
    return initializers, [dequantize], record


def _input_initializers(name: str, s: LayerScales) -> tuple[list, dict]:
    """The scale, zero point (and integer clip bounds) of layer ``name``'s input quantizer, and its sidecar record."""
    from onnx import TensorProto

    data_type = TensorProto.UINT8
    quantizer = s.input
    scale = np.float32(quantizer.scale)
    clip = None if (quantizer.q_min, quantizer.q_max) == (0, 255) else [quantizer.q_min, quantizer.q_max]
    initializers = [
        _float_tensor(f"{name}.input_scale", scale),
        _integer_tensor(f"{name}.input_zero_point", data_type, np.array(quantizer.zero_point)),
    ]
    if clip is not None:
        initializers += [
            _integer_tensor(f"{name}.input_clip_min", data_type, np.array(clip[0])),
            _integer_tensor(f"{name}.input_clip_max", data_type, np.array(clip[1])),
        ]
    record = {
        "type": _type_name(data_type),
        "q_min": quantizer.q_min,
        "q_max": quantizer.q_max,
        "scale": float(scale),
        "zero_point": quantizer.zero_point,
        "clip": clip,
    }
    return initializers, record


def _input_nodes(name: str, tag: str, clipped: bool, source: str, output: str) -> list:
    """``QuantizeLinear [-> Clip] -> DequantizeLinear`` from ``source`` to ``output`` for one call of a layer (the
    clip holds the 8-bit integers to the levels of a narrower quantizer)."""
    from onnx import helper

    nodes = [
        helper.make_node(
            "QuantizeLinear",
            [source, f"{name}.input_scale", f"{name}.input_zero_point"],
            [f"{tag}.input_quantized"],
            name=f"{tag}/input_quantize",
        )
    ]
    levels = f"{tag}.input_quantized"
    if clipped:
        nodes.append(
            helper.make_node(
                "Clip",
                [levels, f"{name}.input_clip_min", f"{name}.input_clip_max"],
                [f"{tag}.input_clipped"],
                name=f"{tag}/input_clip",
            )
        )
        levels = f"{tag}.input_clipped"
    return nodes + [
        helper.make_node(
            "DequantizeLinear",
            [levels, f"{name}.input_scale", f"{name}.input_zero_point"],
            [output],
            name=f"{tag}/input_dequantize",
        )
    ]


def replace_markers(
    graph_model, scales: Mapping[str, LayerScales], weights: Mapping[str, torch.Tensor]
) -> list[dict[str, Any]]:
    """Replace the marker nodes of a traced graph by Q/DQ (in place); return the sidecar's layer list.

    A layer's weight is dequantized once however often it is read; its input gets its own Q/DQ at every call
    (``<layer>``, ``<layer>:1``, ...). Initializers left without a consumer (the float weights) are dropped.
    """
    graph = graph_model.graph
    records = {
        name: {"name": name, "w_bits": s.w_bits, "a_bits": s.a_bits, "weight": None, "input": None}
        for name, s in scales.items()
    }
    calls: dict[str, int] = {}
    renamed: dict[str, str] = {}
    dequantized: dict[str, str] = {}
    nodes, initializers = [], []
    for node in graph.node:
        if node.domain != MARKER_DOMAIN:
            nodes.append(node)
            continue
        name = next(a.s.decode() for a in node.attribute if a.name == "layer")
        s, record = scales[name], records[name]
        if node.op_type == "Weight":
            if name in dequantized:
                renamed[node.output[0]] = dequantized[name]
                continue
            dequantized[name] = node.output[0]
            new_initializers, new_nodes, record["weight"] = _weight_nodes(name, s, weights[name], node.output[0])
        else:
            call = calls[name] = calls.get(name, -1) + 1
            new_initializers = []
            if call == 0:
                new_initializers, record["input"] = _input_initializers(name, s)
            tag = name if call == 0 else f"{name}:{call}"
            new_nodes = _input_nodes(name, tag, record["input"]["clip"] is not None, node.input[0], node.output[0])
        initializers += new_initializers
        nodes += new_nodes
    for node in nodes:
        for i, value in enumerate(node.input):
            node.input[i] = renamed.get(value, value)
    missing = [name for name, s in scales.items() if isinstance(s.weight, QuantParams) and name not in dequantized]
    missing += [name for name, s in scales.items() if isinstance(s.input, QuantParams) and name not in calls]
    if missing:
        raise UserError(f"layer {missing[0]!r} did not run while the model was exported: check the example input")
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(initializers)
    used = {value for node in graph.node for value in node.input} | {o.name for o in graph.output}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    for opset in list(graph_model.opset_import):
        if opset.domain == MARKER_DOMAIN:
            graph_model.opset_import.remove(opset)
    return [records[name] for name in scales]


def onnx_graph(model: nn.Module, example: Any, scales: Mapping[str, LayerScales]):
    """The quantized opset-21 graph of ``model`` and the sidecar's layer list (empty ``scales``: the FP32 graph)."""
    from onnx import version_converter

    modules = layer_modules(model)
    weights = {name: modules[name].weight.detach().clone() for name in scales}
    with quantized_for_export(model, scales):
        graph_model = trace_onnx(model, example, markers=bool(scales))
    layers = replace_markers(graph_model, scales, weights)
    fold_batchnorm(graph_model, layers)
    graph_model = version_converter.convert_version(graph_model, OPSET)
    # MatMulNBits takes float inputs: a 4-bit linear with a quantized input keeps INT8 for MatMulIntegerToFloat
    weight_only = [name for name, s in scales.items() if s.w_bits == 4 and s.input is None]
    blocked = transpose_for_matmul_nbits(graph_model, weight_only)
    for record in layers:
        if record["name"] in blocked:
            record["weight"].update(type="int4", layout="transposed [in, out]", block_size=blocked[record["name"]])
    graph_model.producer_name = "mpq_rl"
    return graph_model, layers


def export_onnx(
    model: nn.Module,
    example: Any,
    scales: Mapping[str, LayerScales],
    path: str | Path,
    source: str,
    check_on: Batches | None = None,
    min_agreement: float = MIN_AGREEMENT,
    threads: int = 1,
) -> dict[str, Any]:
    """Write the quantized ONNX graph to ``path`` and its sidecar to ``path`` + ``.json``; return the sidecar.

    ``source`` says where the scales came from (``"calibrated"`` or ``"learned"``); it is recorded in the sidecar.
    With ``check_on`` (the calibration batches), onnxruntime runs the graph against the simulation, the FP32
    export and their latencies (:mod:`mpq_rl.deployment.export_check`); the sidecar's ``check`` holds the figures, and
    an
    agreement below ``min_agreement`` is a :class:`UserError` after the files are written. Integer sides become
    Q/DQ (the markers), fp / flint sides value tables decoded in the graph (:mod:`mpq_rl.deployment.format_export`); the
    simulation checked against is the model quantized by ``scales`` in PyTorch (LSQ's quantizers in eval mode, the
    simulator's arithmetic).
    """
    import onnx

    graph_model, layers = onnx_graph(model, example, scales)
    splice(graph_model.graph, add_format_layers(graph_model, scales, layers))
    quantized_layers = [record["name"] for record in layers if record["weight"] is not None]
    kernels = layer_kernels(optimized_graph(graph_model.SerializeToString(), threads), quantized_layers)
    reasons = float_reasons(graph_model, kernels)
    float_weights_for_float_kernels(graph_model, layers, kernels)
    onnx.checker.check_model(graph_model, full_check=True)
    path = Path(path)
    quantized = graph_model.SerializeToString()
    names = input_names(model, example)
    sidecar = {
        "format": SIDECAR_FORMAT,
        "model": path.name,
        "opset": OPSET,
        "inputs": names,
        "output": OUTPUT_NAME,
        "scales": source,
        "layers": layers,
        "check": None,
    }
    check = None
    if check_on is not None:
        attachment = LsqAttachment(model, scales)
        try:
            with torch.no_grad():
                simulated = model_outputs(model, check_on).numpy()
        finally:
            attachment.detach()
        fp32 = onnx_graph(model, example, {})[0].SerializeToString()
        kinds = layer_kinds(model, quantized_layers)
        check = check_export(quantized, fp32, names, check_on, simulated, threads, kinds, reasons)
        sidecar["check"] = check.to_dict()
    # The sidecar first, then the model: a model file is only ever there with its checked sidecar.
    atomic_write_json(sidecar_path(path), sidecar)
    atomic_write_bytes(path, quantized)
    if check is not None:
        require_agreement(check, min_agreement, path)
    return sidecar


def sidecar_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".json")


def export_policy(
    workload: Workload,
    policy: Mapping[str, BitPair],
    output: str | Path,
    weights: str | Path | None = None,
    min_agreement: float = MIN_AGREEMENT,
    threads: int = 1,
) -> dict[str, Any]:
    """``mpq-rl export``: ``policy`` on ``workload.model`` (or finetuned ``weights``) as ONNX plus sidecar.

    Finetuned weights come with their learned LSQ scales when ``lsq_scales.safetensors`` lies beside them; any
    other weights are quantized with ranges calibrated here on the calibration split, as the simulator would.
    """
    learned = learned_scales(workload.model, weights, policy) if weights is not None else None
    if learned is not None:
        scales, source = learned, "learned"
    else:
        simulator = calibrated_simulator(workload)
        try:
            scales, source = calibrated_scales(simulator, policy), "calibrated"
        finally:
            simulator.detach()
    return export_onnx(
        workload.model, workload.example, scales, output, source, workload.calibration, min_agreement, threads
    )
