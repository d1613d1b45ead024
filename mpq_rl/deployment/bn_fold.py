"""BatchNorm folded into the per-channel scale and bias of the quantized layer before it, in the ONNX graph.

A quantized convolution (or linear layer) followed by inference-mode BatchNorm computes, per output channel ``c``,

    BN(conv(x, q_c * s_c) + b_c) = conv(x, q_c * s_c * k_c) + (b_c - mean_c) * k_c + beta_c,
    k_c = gamma_c / sqrt(var_c + eps),

so the BatchNorm node can go, the layer's weight scale becomes ``s_c * |k_c|`` and its bias
``(b_c - mean_c) * k_c + beta_c``; where ``k_c`` is negative the channel's integers change sign (a symmetric
narrow-range grid is closed under negation), otherwise they stay bit for bit. The result equals the unfolded graph
up to float32 rounding, and onnxruntime then sees ``DequantizeLinear -> Conv -> QuantizeLinear`` with nothing in
between, the pattern it fuses into ``QLinearConv`` (BatchNorm between the two blocks the fusion). The same holds for
any per-channel affine map; BatchNorm is the one that PyTorch models put there.
"""

from __future__ import annotations

from typing import Any

import numpy as np

FOLDABLE = ("Conv", "Gemm")
"""Layers whose output channels lie on axis 1 of their output and axis 0 of their (per-channel) weight."""


def _gemm_output_axis_is_weight_axis_0(node) -> bool:
    return node.op_type != "Gemm" or any(a.name == "transB" and a.i == 1 for a in node.attribute)


def fold_batchnorm(graph_model, layers: list[dict[str, Any]]) -> list[str]:
    """Fold every inference-mode ``BatchNormalization`` that directly follows a quantized layer's ``Conv`` / ``Gemm``
    (its only consumer, the weight read by that node alone) into the layer (in place); update the layers' sidecar
    records (``weight.scale``, ``weight.folded``) and return the folded layers' names."""
    from onnx import numpy_helper

    graph = graph_model.graph
    initializers = {init.name: init for init in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for value in node.input:
            consumers.setdefault(value, []).append(node)
    outputs = {output.name for output in graph.output}
    records = {record["name"]: record for record in layers if record["weight"] is not None}
    folded, dropped, renamed = [], [], {}
    for bn in graph.node:
        if bn.op_type != "BatchNormalization" or any(a.name == "training_mode" and a.i for a in bn.attribute):
            continue
        layer_node = producers.get(bn.input[0])
        if layer_node is None or layer_node.op_type not in FOLDABLE or len(consumers[bn.input[0]]) != 1:
            continue
        dequantize = producers.get(layer_node.input[1])
        name = dequantize.name.rsplit("/", 1)[0] if dequantize is not None else None
        if (
            name not in records
            or dequantize.name != f"{name}/weight_dequantize"
            or len(consumers[dequantize.output[0]]) != 1
            or not _gemm_output_axis_is_weight_axis_0(layer_node)
            or not all(value in initializers for value in [*bn.input[1:], *layer_node.input[2:]] if value)
            or bn.output[0] in outputs
        ):
            continue
        gamma, beta, mean, var = (numpy_helper.to_array(initializers[v]).astype(np.float64) for v in bn.input[1:])
        epsilon = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        k = gamma / np.sqrt(var + epsilon)
        levels_name, scale_name = f"{name}.weight_quantized", f"{name}.weight_scale"
        levels = numpy_helper.to_array(initializers[levels_name])
        sign = np.where(k < 0, -1, 1).reshape(-1, *[1] * (levels.ndim - 1)).astype(levels.dtype)
        scale = (numpy_helper.to_array(initializers[scale_name]).astype(np.float64) * np.abs(k)).astype(np.float32)
        bias = np.zeros_like(k)
        if len(layer_node.input) > 2 and layer_node.input[2]:
            bias = numpy_helper.to_array(initializers[layer_node.input[2]]).astype(np.float64)
        bias = ((bias - mean) * k + beta).astype(np.float32)
        initializers[levels_name].CopyFrom(numpy_helper.from_array(levels * sign, levels_name))
        initializers[scale_name].CopyFrom(numpy_helper.from_array(scale, scale_name))
        graph.initializer.append(numpy_helper.from_array(bias, f"{name}.bias_folded"))
        inputs = [*layer_node.input[:2], f"{name}.bias_folded"]
        del layer_node.input[:]
        layer_node.input.extend(inputs)
        renamed[bn.output[0]] = layer_node.output[0]
        dropped.append(bn)
        record = records[name]["weight"]
        record.update(scale=scale.tolist(), folded=bn.name, negated_channels=int((k < 0).sum()))
        folded.append(name)
    for bn in dropped:
        graph.node.remove(bn)
    for node in graph.node:
        for i, value in enumerate(node.input):
            node.input[i] = renamed.get(value, value)
    used = {value for node in graph.node for value in node.input}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return folded
