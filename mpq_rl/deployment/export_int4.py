"""4-bit linear weights laid out for onnxruntime's ``MatMulNBits`` kernel (real 4-bit matrix products on CPU).

onnxruntime fuses ``DequantizeLinear -> MatMul`` into ``MatMulNBits`` when the weight is INT4/UINT4 of shape
``[K, N]`` (the MatMul's ``B``), dequantized block-wise along ``K`` (opset 21's ``block_size``, a power of two of
at least 16). The traced graph holds a linear layer's weight as ``[N, K]`` INT8 per output channel, followed by a
``Transpose``; the rewritten weight is stored in INT4. A per-channel scale is a block-wise scale repeated over the
blocks of its column, so storing the transposed integers with that repeated scale dequantizes to exactly the same
matrix, and the fusion applies.
"""

from __future__ import annotations

import numpy as np

MAX_BLOCK = 128
"""The largest block used (onnxruntime's CPU kernels are tuned for 16 to 128)."""
MIN_BLOCK = 16


def block_size(k: int) -> int | None:
    """The largest power of two dividing ``k`` within [16, 128], or None."""
    size = MAX_BLOCK
    while size >= MIN_BLOCK:
        if k % size == 0:
            return size
        size //= 2
    return None


def transpose_for_matmul_nbits(graph_model, layers: list[str]) -> dict[str, int]:
    """Rewrite ``<layer>/weight_dequantize -> Transpose -> MatMul`` of the 4-bit ``layers`` (in place) into a
    block-wise ``DequantizeLinear`` of the transposed integers feeding the MatMul; return the rewritten layers'
    block sizes."""
    import ml_dtypes
    from onnx import TensorProto, helper, numpy_helper

    graph = graph_model.graph
    initializers = {init.name: init for init in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for value in node.input:
            consumers.setdefault(value, []).append(node)
    by_name = {node.name: node for node in graph.node}
    rewritten: dict[str, int] = {}
    for layer in layers:
        dequantize = by_name.get(f"{layer}/weight_dequantize")
        users = consumers.get(dequantize.output[0], []) if dequantize is not None else []
        if len(users) != 1 or users[0].op_type != "Transpose":
            continue
        transpose = users[0]
        if any(u.op_type != "MatMul" or u.input[1] != transpose.output[0] for u in consumers[transpose.output[0]]):
            continue
        weights = initializers[f"{layer}.weight_quantized"]
        if weights.data_type != TensorProto.INT8 or len(weights.dims) != 2:
            continue
        size = block_size(int(weights.dims[1]))
        if size is None:
            continue
        levels = numpy_helper.to_array(weights).T.astype(ml_dtypes.int4)  # [K, N]
        scale = numpy_helper.to_array(initializers[f"{layer}.weight_scale"])
        blocks = np.repeat(scale[None, :], levels.shape[0] // size, axis=0)  # [K / size, N]
        for name, value in (
            (f"{layer}.weight_quantized", levels),
            (f"{layer}.weight_scale", blocks.astype(np.float32)),
            (f"{layer}.weight_zero_point", np.zeros(blocks.shape, dtype=ml_dtypes.int4)),
        ):
            initializers[name].CopyFrom(numpy_helper.from_array(value, name))
        replacement = helper.make_node(
            "DequantizeLinear",
            list(dequantize.input),
            [transpose.output[0]],
            name=dequantize.name,
            axis=0,
            block_size=size,
        )
        graph.node.remove(transpose)
        dequantize.CopyFrom(replacement)
        rewritten[layer] = size
    return rewritten
