"""Which onnxruntime kernel runs each quantized layer, read from onnxruntime's own optimized graph.

onnxruntime turns ``DequantizeLinear -> Conv -> QuantizeLinear`` into ``QLinearConv``, ``DequantizeLinear ->
MatMul`` into ``MatMulIntegerToFloat`` (or ``MatMulNBits`` for block-wise 4-bit weights), ``DequantizeLinear ->
Gemm -> QuantizeLinear`` into ``QGemm``; what it cannot fuse runs in float32 on dequantized values. Session option
``optimized_model_filepath`` writes the graph it actually runs; a layer's kernel is the node there that reads the
layer's integer weights (``<layer>.weight_quantized``), or, where that is a ``DequantizeLinear``, the float node
after it.

A convolution left in float32 reads its weights from a ``DequantizeLinear`` at every run, which keeps onnxruntime
from packing them into its blocked layout (about 4x slower than the FP32 graph's convolution on the digits CNN), so
:func:`float_weights_for_float_kernels` gives such a layer its dequantized weights as a float32 constant: the same
values, ``q * s`` in float32, computed once.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from mpq_rl.workloads.layers import layer_modules

INTEGER_OPS = ("QLinearConv", "QGemm", "MatMulIntegerToFloat", "MatMulInteger", "ConvInteger", "MatMulNBits")
FLOAT_WEIGHTS = "float32 (weights as constants)"
"""The kernel of a layer whose integer weights onnxruntime's optimized graph no longer reads: float32 weights,
stored so by :func:`float_weights_for_float_kernels` or constant-folded by onnxruntime."""


def layer_kind(module: nn.Module) -> str:
    """``conv``, ``depthwise conv``, ``grouped conv``, ``conv1d`` or ``linear`` (attention projections included)."""
    if isinstance(module, nn.Conv1d):
        return "conv1d"
    if isinstance(module, nn.modules.conv._ConvNd):
        if module.groups == 1:
            return "conv"
        return "depthwise conv" if module.groups == module.in_channels else "grouped conv"
    return "linear"


def layer_kinds(model: nn.Module, names: list[str]) -> dict[str, str]:
    modules = layer_modules(model)
    return {name: layer_kind(modules[name]) for name in names}


def session(model: bytes, threads: int, optimized_path: Path | None = None):
    """An onnxruntime CPU session on a serialized model (all graph optimizations on)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
        options.log_severity_level = 3  # not the warning that an optimized model is specific to this machine
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def optimized_graph(model_bytes: bytes, threads: int = 1):
    """The graph onnxruntime runs for ``model_bytes`` on this machine's CPU (all optimizations on)."""
    import onnx

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "optimized.onnx"
        session(model_bytes, threads, path)
        return onnx.load(str(path))


def layer_kernels(optimized, layers: list[str]) -> dict[str, str]:
    """Each layer's kernel in an optimized graph: the integer op that reads its integer weights or its quantized
    input, or ``float <op>``."""
    consumers: dict[str, list] = {}
    for node in optimized.graph.node:
        for value in node.input:
            consumers.setdefault(value, []).append(node)
    kernels = {}
    for name in layers:
        # onnxruntime renames a weight it transposes or packs (``<layer>.weight_quantized_T``); the quantized
        # input keeps its name
        weight = f"{name}.weight_quantized"
        inputs = (f"{name}.input_quantized", f"{name}.input_clipped")
        readers = [
            node for value, users in consumers.items() if value.startswith(weight) or value in inputs for node in users
        ]
        integer = [node.op_type for node in readers if is_integer(node.op_type)]
        dequantized = [
            node for node in consumers.get(f"{name}.weight_quantized", []) if node.op_type == "DequantizeLinear"
        ]
        if integer:
            kernels[name] = integer[0]
        elif dequantized:
            after = consumers.get(dequantized[0].output[0], [])
            kernels[name] = f"float {after[0].op_type}" if after else "float"
        elif f"{name}.weight_codes" in consumers:
            kernels[name] = "float (value-table decode)"
        else:
            kernels[name] = FLOAT_WEIGHTS
    return kernels


def is_integer(kernel: str) -> bool:
    return kernel in INTEGER_OPS


def float_weights_for_float_kernels(graph_model, layers: list[dict[str, Any]], kernels: Mapping[str, str]) -> list[str]:
    """Store, as float32 constants, the dequantized weights of the convolutions that run in float32 (``kernels``,
    from :func:`layer_kernels`) in place (see the module docstring); mark their sidecar records, return their names."""
    from onnx import numpy_helper

    graph = graph_model.graph
    quantized = [record["name"] for record in layers if record["weight"] is not None]
    initializers = {init.name: init for init in graph.initializer}
    nodes = {node.name: node for node in graph.node}
    records = {record["name"]: record for record in layers}
    moved = []
    for name in quantized:
        dequantize = nodes.get(f"{name}/weight_dequantize")
        if kernels[name] not in ("float Conv", "float FusedConv") or dequantize is None:
            continue
        if any(a.name == "block_size" for a in dequantize.attribute):
            continue
        levels = numpy_helper.to_array(initializers[f"{name}.weight_quantized"]).astype(np.float32)
        scale = numpy_helper.to_array(initializers[f"{name}.weight_scale"])
        weights = levels * scale.reshape(-1, *[1] * (levels.ndim - 1))  # DequantizeLinear's float32 product
        graph.node.remove(dequantize)
        graph.initializer.append(numpy_helper.from_array(weights.astype(np.float32), dequantize.output[0]))
        records[name]["weight"]["stored"] = FLOAT_WEIGHTS
        moved.append(name)
    used = {value for node in graph.node for value in node.input}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return moved


def _output_users(graph, name: str) -> list[str] | None:
    """The ops reading the output of layer ``name``'s node (through one ReLU), in the exported graph; None when the
    layer's node is not found."""
    consumers: dict[str, list] = {}
    for node in graph.node:
        for value in node.input:
            consumers.setdefault(value, []).append(node)
    weight = next((n.output[0] for n in graph.node if n.name == f"{name}/weight_dequantize"), None)
    layer_nodes = [n for n in graph.node if weight is not None and weight in n.input]
    if not layer_nodes:
        return None
    output = layer_nodes[0].output[0]
    users = consumers.get(output, [])
    if len(users) == 1 and users[0].op_type == "Relu":
        output = users[0].output[0]
        users = consumers.get(output, [])
    graph_outputs = {o.name for o in graph.output}
    return sorted({user.op_type for user in users} | ({"the model's output"} if output in graph_outputs else set()))


def kernel_summary(kernels: Mapping[str, str], kinds: Mapping[str, str]) -> list[str]:
    """One line per layer kind: how many of its layers ran which kernel."""
    by_kind: dict[str, Counter] = {}
    for name, kernel in kernels.items():
        by_kind.setdefault(kinds.get(name, "layer"), Counter())[kernel] += 1
    return [
        f"{kind}: " + ", ".join(f"{kernel} x{n}" for kernel, n in counts.most_common())
        for kind, counts in sorted(by_kind.items())
    ]


def why_not_faster(kernels: Mapping[str, str], kinds: Mapping[str, str], reasons: Mapping[str, str]) -> str:
    """One line on why a quantized graph runs no faster than FP32, from the kernels its layers got."""
    slow = [name for name, kernel in kernels.items() if not is_integer(kernel)]
    if not slow:
        return (
            "every quantized layer runs an integer kernel, but the layers are too small for it to pay for "
            "quantizing their inputs and changing layouts around them"
        )
    listed = "; ".join(f"{name} ({kinds.get(name, 'layer')}: {reasons.get(name, kernels[name])})" for name in slow)
    return f"{len(slow)} of {len(kernels)} quantized layers run in float32 in onnxruntime on this CPU: {listed}"


def float_reasons(graph_model, kernels: Mapping[str, str]) -> dict[str, str]:
    """Why each layer onnxruntime ran in float32 got no integer kernel, in a few words."""
    reasons = {}
    for name, kernel in kernels.items():
        if is_integer(kernel):
            continue
        if kernel.startswith("float (value"):
            reasons[name] = "a value-table format, decoded in float32"
            continue
        users = [op for op in _output_users(graph_model.graph, name) or [] if op != "QuantizeLinear"]
        if users:
            reasons[name] = f"its output feeds {', '.join(users)} in float32, so QLinearConv/QGemm cannot fuse"
        else:
            reasons[name] = "onnxruntime has no integer kernel for this layer here"
    return reasons
