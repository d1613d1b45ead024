"""Compiled CPU kernels for the evaluation hot path: activation fake quantization (integers and value tables) and
output scoring; and for range searches (squared quantization errors of many candidate ranges).

An episode on a small model is one forward pass plus a few dozen small array operations, and on a CPU each of
those costs tens of microseconds once the forward pass has pushed the interpreter and NumPy out of the caches:
more than the arithmetic. Each kernel here does in one compiled call what took 4 (fake quantization) or 15
(scoring) tensor operations. They are compiled by numba on first use (about a second; the machine code is cached
on disk for later processes), so importing this module costs nothing.
"""

from __future__ import annotations

import ctypes
import functools
import math
from collections.abc import Callable

import numpy as np

FakeQuantize = Callable[[int, int, int, float, float, float, float], None]


@functools.cache
def fake_quantize() -> FakeQuantize:
    """``kernel(x_ptr, out_ptr, n, inv_scale, scale, low, high)``: for the ``n`` float32 values at ``x_ptr``,
    ``out = clamp(round_half_even(x * inv_scale), low, high) * scale`` in float32, in one vectorized pass.

    Called through ctypes on raw pointers (a third of the call overhead of passing arrays), which releases the
    GIL. The caller guarantees ``n`` contiguous float32 values at both pointers.
    """
    import numba
    from numba import types

    f32 = types.float32
    pointer = types.CPointer(f32)

    @numba.cfunc(types.void(pointer, pointer, types.intp, f32, f32, f32, f32), cache=True, nogil=True)
    def kernel(x_ptr, out_ptr, n, inv_scale, scale, low, high):  # type: ignore[no-untyped-def]
        x = numba.carray(x_ptr, (n,))
        out = numba.carray(out_ptr, (n,))
        for i in range(n):
            level = np.rint(x[i] * inv_scale)
            if level < low:
                level = low
            elif level > high:
                level = high
            out[i] = level * scale

    c_float = ctypes.c_float
    return ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_ssize_t, *[c_float] * 4)(kernel.address)


SquaredErrors = Callable[..., None]


@functools.cache
def tensor_errors() -> SquaredErrors:
    """``kernel(x, inv_scale, scale, low, high, out)``: for each candidate ``m`` of a per-tensor quantizer,
    ``out[m] = (clamp(round_half_even(x * inv_scale[m]), low[m], high[m]) * scale[m] - x) ** 2`` in float32 (``x``
    1-D, ``out`` candidates x values): the squared errors a range search sums, in one pass instead of six tensor
    operations. The arithmetic is :class:`mpq_rl.quantization.quant.QuantParams`', so the errors are bit for bit the
    same."""
    import numba
    from numba import types

    f32 = types.float32
    signature = types.void(f32[::1], f32[::1], f32[::1], f32[::1], f32[::1], f32[:, ::1])

    @numba.njit(signature, cache=True, nogil=True)
    def kernel(x, inv_scale, scale, low, high, out):  # type: ignore[no-untyped-def]
        for m in range(out.shape[0]):
            for i in range(x.shape[0]):
                level = np.rint(x[i] * inv_scale[m])
                if level < low[m]:
                    level = low[m]
                elif level > high[m]:
                    level = high[m]
                error = level * scale[m] - x[i]
                out[m, i] = error * error

    return kernel


@functools.cache
def channel_errors() -> SquaredErrors:
    """``kernel(rows, scale, limit, out)``: for each candidate ``m`` of a symmetric per-channel quantizer,
    ``out[m, c] = (clamp(round_half_even(rows[c] / scale[m, c]), -limit[m], limit[m]) * scale[m, c] - rows[c]) ** 2``
    in float32 (``rows`` channels x values, ``out`` candidates x channels x values), in one pass: the squared errors
    of :func:`mpq_rl.quantization.quant.weight_scales`' search, bit for bit."""
    import numba
    from numba import types

    f32 = types.float32
    signature = types.void(f32[:, ::1], f32[:, ::1], f32[::1], f32[:, :, ::1])

    @numba.njit(signature, cache=True, nogil=True)
    def kernel(rows, scale, limit, out):  # type: ignore[no-untyped-def]
        for m in range(out.shape[0]):
            for c in range(rows.shape[0]):
                step = scale[m, c]
                for n in range(rows.shape[1]):
                    level = np.rint(rows[c, n] / step)
                    if level < -limit[m]:
                        level = -limit[m]
                    elif level > limit[m]:
                        level = limit[m]
                    error = level * step - rows[c, n]
                    out[m, c, n] = error * error

    return kernel


TableQuantize = Callable[[int, int, int, float, int, int, int], None]
TABLE_BLOCK = 512
"""Elements per block of :func:`table_quantize` (its counts and scaled inputs stay in the L1 cache)."""


@functools.cache
def table_quantize() -> TableQuantize:
    """``kernel(x_ptr, out_ptr, n, scale, midpoints_ptr, values_ptr, m)``: for the ``n`` float32 values at
    ``x_ptr``, ``out = values[k] * scale`` with ``k`` the number of the ``m - 1`` sorted ``midpoints`` below
    ``x / scale`` (float32 arithmetic): the nearest of the ``m`` sorted table ``values``, ties to the smaller.

    What :func:`mpq_rl.quantization.formats.fake_quantize` computes with ``torch.bucketize``, bit for bit, several times
    faster:
    instead of a bisection per element (a branch the CPU mispredicts at every step), the elements go in blocks of
    :data:`TABLE_BLOCK`, and for each midpoint one vectorized pass over the block counts the elements above it; the
    count is the index of the nearest value. ``!(midpoint >= v)`` is ``bucketize``'s own comparison, so NaN lands
    on the last value as there. Called through ctypes on raw pointers, like :func:`fake_quantize`; the caller
    guarantees contiguous float32 arrays.
    """
    import numba
    from numba import types

    f32 = types.float32
    pointer = types.CPointer(f32)
    block = TABLE_BLOCK

    @numba.cfunc(types.void(pointer, pointer, types.intp, f32, pointer, pointer, types.intp), cache=True, nogil=True)
    def kernel(x_ptr, out_ptr, n, scale, midpoints_ptr, values_ptr, m):  # type: ignore[no-untyped-def]
        x = numba.carray(x_ptr, (n,))
        out = numba.carray(out_ptr, (n,))
        midpoints = numba.carray(midpoints_ptr, (m - 1,))
        values = numba.carray(values_ptr, (m,))
        counts = np.empty(block, dtype=np.int32)
        for start in range(0, n, block):
            size = min(block, n - start)
            scaled = out[start : start + size]  # x / scale is kept in the output until the values replace it
            for i in range(size):
                scaled[i] = x[start + i] / scale
                counts[i] = 0
            for j in range(m - 1):
                midpoint = midpoints[j]
                for i in range(size):
                    counts[i] += np.int32(not (midpoint >= scaled[i]))
            for i in range(size):
                scaled[i] = values[counts[i]] * scale

    c_float, pointer_type = ctypes.c_float, ctypes.c_void_p
    return ctypes.CFUNCTYPE(
        None, pointer_type, pointer_type, ctypes.c_ssize_t, c_float, pointer_type, pointer_type, ctypes.c_ssize_t
    )(kernel.address)


OutputScores = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray], tuple[float, float, float, float]]


@functools.cache
def output_scores() -> OutputScores:
    """``kernel(out, reference_unit, reference_top1, p, targets)`` -> sums over samples of ``(cosine, agreement,
    cross, top1)``, in float64, in one pass over ``out`` (float32, samples x features).

    ``cosine`` is each row's cosine similarity to ``reference_unit`` (the FP32 rows, unit length; norms floored at
    1e-8); ``agreement`` counts rows whose first argmax equals ``reference_top1``; ``cross`` is ``sum_j p_j
    log_softmax(out)_j`` per row, with ``p`` the FP32 softmax (samples x features, or 0 x 0 to skip it); ``top1``
    counts rows whose argmax equals ``targets`` (or an empty array to skip it).
    """
    import numba
    from numba import types

    f64 = types.float64
    signature = types.UniTuple(f64, 4)(
        types.float32[:, ::1], f64[:, ::1], types.int64[::1], f64[:, ::1], types.int64[::1]
    )

    @numba.njit(signature, cache=True, nogil=True)
    def kernel(out, reference_unit, reference_top1, p, targets):  # type: ignore[no-untyped-def]
        samples, features = out.shape
        with_p, with_targets = p.shape[0] > 0, targets.shape[0] > 0
        cosine = agreement = cross = top1 = 0.0
        for i in range(samples):
            top, best, squares, dot = np.float64(out[i, 0]), 0, 0.0, 0.0
            for j in range(features):
                value = np.float64(out[i, j])
                if value > top:
                    top, best = value, j
                squares += value * value
                dot += value * reference_unit[i, j]
            cosine += dot / max(math.sqrt(squares), 1e-8)
            agreement += best == reference_top1[i]
            if with_targets:
                top1 += best == targets[i]
            if with_p:
                exps, weighted, mass = 0.0, 0.0, 0.0
                for j in range(features):
                    shifted = np.float64(out[i, j]) - top
                    exps += math.exp(shifted)
                    weighted += p[i, j] * shifted
                    mass += p[i, j]
                cross += weighted - mass * math.log(exps)
        return cosine, agreement, cross, top1

    return kernel
