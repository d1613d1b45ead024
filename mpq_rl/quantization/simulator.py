"""The quantization simulator: applies a bit-width policy to a live model in O(layers) tensor swaps.

The model is never copied. Quantized weights are computed once per (layer, bits) and cached; activation
quantizers are calibrated once per (layer, bits) from statistics gathered in one FP32 pass over the calibration
data. A search problem computes all of them when it is built (:meth:`QuantSimulator.prepare`, every bit-width of a
layer in one vectorized range search), so that early episodes cost what late ones do. Applying a policy swaps each
layer's weight storage and sets the quantizer its input pre-hook uses; :meth:`QuantSimulator.restore` puts the
original FP32 tensors back, bit-identical.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from mpq_rl.errors import UserError
from mpq_rl.quantization import formats, groupwise
from mpq_rl.quantization.claims import claim_layers, release_layers
from mpq_rl.quantization.kernels import fake_quantize, table_quantize
from mpq_rl.quantization.policy import BitPair
from mpq_rl.quantization.quant import (
    ActivationSample,
    Quantizer,
    QuantParams,
    RangeMethod,
    is_float_bits,
)
from mpq_rl.workloads.layers import layer_modules
from mpq_rl.workloads.model_io import batch_size_of, call_model

SAMPLE_VALUES_PER_LAYER = 65536
"""Activation values kept per layer for range search (a seeded random subsample of the calibration pass)."""
_MAX_SCRATCH_VIEWS = 64
"""Activation shapes whose views of the scratch buffer are kept (the cache starts afresh past this)."""


@dataclass
class _ActivationStats:
    lo: float = math.inf
    hi: float = -math.inf
    samples: list[torch.Tensor] = field(default_factory=list)


class _InferenceFakeQuant:
    """``quantizer(x)``, bit for bit, several times faster on CPU when no gradient is needed.

    PyTorch's fused per-tensor fake-quantize kernel on CPU also writes the STE mask and is not vectorized: on a
    digits activation it costs as much as 15 to 30 ReLUs, a third of the convolution it feeds. Outside autograd
    one pass of a compiled loop (:func:`mpq_rl.quantization.kernels.fake_quantize`) computes the kernel's arithmetic
    (``x * (1 /
    scale)`` with both in float32, round half to even, ``+ zero point``, clamp, ``- zero point``, ``* scale``):
    adding and subtracting the integer zero point around the clamp is the same as clamping to the shifted integer
    range. A value-table quantizer (fp, flint) runs :func:`mpq_rl.quantization.kernels.table_quantize`, which finds the
    nearest
    value by the same bisection as ``torch.bucketize`` in the same pass as the scaling. Non-contiguous inputs take the
    kernels too: a transposed or permuted input directly, in memory order, keeping its layout; one with gaps (a slice)
    after one copy into the buffer. Elsewhere (gradients, GPU, other dtypes, per-channel quantizers) the quantizer's
    own ``fake_quantize`` runs.

        The loop writes into one scratch buffer, grown to the largest activation seen, instead of a new tensor per
        layer: large allocations come from fresh ``mmap`` pages, and their page faults (about 600 more per digits
        forward pass without the buffer) were a visible share of the cost. Reusing it is safe because a layer's
        quantized input lives only until that layer returns (Conv and Linear keep no reference to it), before the
        next hooked layer runs.
    """

    def __init__(self) -> None:
        self.scratch = torch.empty(0)
        self._views: dict[tuple[torch.Size, tuple[int, ...]], torch.Tensor] = {}
        self._kernels: dict[Quantizer, _KernelCall] = {}

    def __call__(self, quantizer: Quantizer, x: torch.Tensor) -> torch.Tensor:
        # This runs once per quantized layer per batch: its overhead shows next to small layers, hence the cached
        # views and constants, and a kernel called on raw pointers (a third of the cost of passing arrays).
        if (
            not isinstance(quantizer, QuantParams | formats.TableQuantizer)
            or quantizer.axis is not None
            or x.dtype is not torch.float32
            or not x.is_cpu
            or (x.requires_grad and torch.is_grad_enabled())
        ):
            return quantizer.fake_quantize(x)
        call = self._kernels.get(quantizer)
        if call is None:
            call = self._kernels[quantizer] = _kernel_call(quantizer)
        key = (x.shape, x.stride())
        out = self._views.get(key)
        if out is None:
            out = self._view(x)
        if out.stride() == x.stride():
            call.kernel(x.data_ptr(), out.data_ptr(), x.numel(), *call.constants)
        else:
            # strided with gaps (a slice): one copy into the dense buffer, then the kernel in place
            out.copy_(x)
            call.kernel(out.data_ptr(), out.data_ptr(), x.numel(), *call.constants)
        return out

    def _view(self, x: torch.Tensor) -> torch.Tensor:
        """A view of the scratch buffer for ``x``: with ``x``'s strides when ``x`` fills a dense block of memory in
        some order (contiguous, transposed, permuted), so the kernel runs over both blocks in memory order and the
        output keeps the input's layout (as the fused kernel's does); contiguous otherwise."""
        numel = x.numel()
        if self.scratch.numel() < numel or len(self._views) >= _MAX_SCRATCH_VIEWS:
            self.scratch = torch.empty(max(numel, self.scratch.numel()), dtype=torch.float32)
            self._views.clear()
        block = self.scratch[:numel]
        view = block.as_strided(x.shape, x.stride()) if _dense(x) else block.view(x.shape)
        self._views[(x.shape, x.stride())] = view
        return view


def _dense(x: torch.Tensor) -> bool:
    """Whether ``x``'s elements fill ``x.numel()`` consecutive places in memory (a permutation of a contiguous
    layout, size-1 dimensions aside)."""
    dims = sorted((stride, size) for size, stride in zip(x.shape, x.stride(), strict=True) if size != 1)
    expected = 1
    for stride, size in dims:
        if stride != expected:
            return False
        expected *= size
    return True


@dataclass(frozen=True)
class _KernelCall:
    """A compiled kernel and its arguments after ``(x, out, n)`` for one quantizer; ``arrays`` keeps alive the
    tensors whose addresses are among the arguments."""

    kernel: Callable[..., None]
    constants: tuple[float | int, ...]
    arrays: tuple[torch.Tensor, ...] = ()


def _kernel_call(quantizer: QuantParams | formats.TableQuantizer) -> _KernelCall:
    if isinstance(quantizer, QuantParams):
        return _KernelCall(fake_quantize(), _float32_constants(quantizer))
    values = quantizer.table.float().contiguous()
    midpoints = ((values[1:] + values[:-1]) * 0.5).contiguous()  # as formats.codes_of computes them
    constants = (float(np.float32(quantizer.scale)), midpoints.data_ptr(), values.data_ptr(), values.numel())
    return _KernelCall(table_quantize(), constants, (midpoints, values))


def _float32_constants(quantizer: QuantParams) -> tuple[float, float, float, float]:
    """``1 / scale`` and ``scale`` as the fused kernel computes them (float32), and the shifted integer range;
    as Python floats, which hold float32 values exactly."""
    scale = np.float32(quantizer.scale)
    return (
        float(np.float32(1.0) / scale),
        float(scale),
        float(quantizer.q_min - quantizer.zero_point),
        float(quantizer.q_max - quantizer.zero_point),
    )


@dataclass(frozen=True)
class RangeSettings:
    """How a simulator sets its clipping ranges (``quantization.weight_range`` etc.): resolved once from the config
    and carried by the workload, so the search, the held-out scores, finetuning and export calibrate alike."""

    weight_range: RangeMethod = "mse"
    activation_range: RangeMethod = "mse"
    percentile: float = 99.99
    seed: int = 0


class QuantSimulator:
    """Fake-quantize the named layers of ``model`` according to a policy, without copying the model.

    Use :meth:`calibrate` once with the calibration inputs (needed before any activation is quantized), then
    :meth:`apply` policies, or ``with sim.applied(policy): ...``. Call :meth:`detach` to remove the hooks.
    """

    def __init__(
        self,
        model: nn.Module,
        layer_names: Sequence[str],
        weight_range: RangeMethod = "mse",
        activation_range: RangeMethod = "mse",
        percentile: float = 99.99,
        seed: int = 0,
    ) -> None:
        modules = layer_modules(model)
        missing = [name for name in layer_names if name not in modules]
        if missing:
            raise UserError(f"the model has no module named {missing[0]!r}: check the layer names")
        claim_layers({name: modules[name] for name in layer_names}, "simulated by another QuantSimulator")
        self.model = model
        self.layer_names = tuple(layer_names)
        self.modules = {name: modules[name] for name in self.layer_names}
        self.weight_range = weight_range
        self.activation_range = activation_range
        self.percentile = percentile
        self.seed = seed
        self.fp32_weights = {name: module.weight.data for name, module in self.modules.items()}
        self._weights: dict[tuple[str, int], torch.Tensor] = {}
        self._weight_quantizers: dict[tuple[str, int], Quantizer] = {}
        self._quantizers: dict[tuple[str, int], Quantizer] = {}
        self._stats: dict[str, _ActivationStats] | None = None
        self._active: dict[str, Quantizer | None] = dict.fromkeys(self.layer_names)
        self._current: dict[str, BitPair] = {}
        self._fake_quant = _InferenceFakeQuant()
        self._handles = [
            module.register_forward_pre_hook(self._make_hook(name)) for name, module in self.modules.items()
        ]

    def _make_hook(self, name: str):
        active, fake_quant = self._active, self._fake_quant

        def hook(module: nn.Module, args: tuple) -> tuple | None:
            quantizer = active[name]
            if quantizer is None:
                return None
            return (fake_quant(quantizer, args[0]), *args[1:])

        return hook

    @property
    def calibrated(self) -> bool:
        return self._stats is not None

    def calibrate(self, inputs: Iterable[Any], total_samples: int | None = None) -> None:
        """Observe each layer's input over the FP32 model once (ranges and a seeded value subsample)."""
        self.restore()
        batches = list(inputs)
        if not batches:
            raise UserError("calibration needs at least one batch of data")
        total = total_samples or sum(batch_size_of(b) for b in batches)
        stats = {name: _ActivationStats() for name in self.layer_names}
        generator = torch.Generator().manual_seed(self.seed)
        current_batch = [0]

        def make_observer(name: str):
            def observe(module: nn.Module, args: tuple) -> None:
                x = args[0].detach().float().reshape(-1)
                record = stats[name]
                record.lo = min(record.lo, float(x.min()))
                record.hi = max(record.hi, float(x.max()))
                keep = min(x.numel(), math.ceil(SAMPLE_VALUES_PER_LAYER * current_batch[0] / total))
                index = torch.randint(x.numel(), (keep,), generator=generator)
                record.samples.append(x[index])

            return observe

        handles = [m.register_forward_pre_hook(make_observer(n)) for n, m in self.modules.items()]
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                for batch in batches:
                    current_batch[0] = batch_size_of(batch)
                    call_model(self.model, batch)
        finally:
            for handle in handles:
                handle.remove()
            self.model.train(was_training)
        self._stats = stats
        self._quantizers.clear()

    def weight_quantizer(self, name: str, bits: int) -> Quantizer | None:
        """The cached weight quantizer of layer ``name`` at ``bits`` (a precision code of
        :mod:`mpq_rl.quantization.formats`;
        None for floating point): its range chosen once, on first use unless :meth:`prepare` did it."""
        if is_float_bits(bits):
            return None
        if (name, bits) not in self._weight_quantizers:
            self._quantize_weights(name, [bits])
        return self._weight_quantizers[(name, bits)]

    def weight(self, name: str, bits: int) -> torch.Tensor:
        """The cached quantized weight of layer ``name`` at ``bits`` (a precision code of
        :mod:`mpq_rl.quantization.formats`; computed on first use unless :meth:`prepare` did it)."""
        if is_float_bits(bits):
            return self.fp32_weights[name]
        if (name, bits) not in self._weights:
            self._quantize_weights(name, [bits])
        return self._weights[(name, bits)]

    def activation_sample(self, name: str) -> torch.Tensor:
        """The seeded subsample of layer ``name``'s calibration input that its activation ranges are chosen on."""
        if self._stats is None:
            raise UserError("activation statistics need calibration data: call calibrate() first")
        record = self._stats[name]
        if not record.samples:
            raise UserError(f"layer {name!r} did not run during calibration, so its input range is unknown")
        return torch.cat(record.samples)

    def activation(self, name: str, bits: int) -> Quantizer | None:
        """The cached input quantizer of layer ``name`` at ``bits`` (a precision code; None for floating point;
        computed on first use unless :meth:`prepare` did it)."""
        if is_float_bits(bits):
            return None
        if (name, bits) not in self._quantizers:
            if self._stats is None:
                raise UserError("activation bits need calibration data: call calibrate() before apply()")
            self._search_activations(name, [bits])
        return self._quantizers[(name, bits)]

    def prepare(self, candidates: Mapping[str, tuple[Collection[int], Collection[int]]]) -> None:
        """Quantize now the weights and search now the input ranges of every candidate: ``candidates`` maps a layer
        to its weight and its activation precision codes. A layer's integer bit-widths are searched together, in one
        pass (other formats one code at a time), so that no episode of a search pays for a range search: the first
        episodes cost what the later ones do. The results are those of :meth:`weight` and :meth:`activation` bit for
        bit. Input ranges need :meth:`calibrate` first; a layer that did not run during calibration is left to fail
        when a policy quantizes its input."""
        for name, (weight_codes, activation_codes) in candidates.items():
            self._quantize_weights(name, [c for c in weight_codes if (name, c) not in self._weights])
            if self._stats is not None and self._stats[name].samples:
                self._search_activations(name, [c for c in activation_codes if (name, c) not in self._quantizers])

    def _quantize_weights(self, name: str, codes: Sequence[int]) -> None:
        """Choose the weight quantizers of layer ``name`` at ``codes`` (integer bit-widths in one search) and cache
        them with the quantized weights."""
        weight = self.fp32_weights[name]
        quantizers: dict[int, Quantizer] = {}
        for code in codes:
            if groupwise.is_block_code(code):
                quantizers[code] = groupwise.weight_quantizer(weight, code, name)
        others = (c for c in codes if not is_float_bits(c) and not groupwise.is_block_code(c))
        for number_format, group in formats.by_format(others):
            bits = [formats.bits_of(c) for c in group]
            found = number_format.weight_quantizers(weight, bits, self.weight_range, self.percentile)
            quantizers.update(zip(group, found, strict=True))
        with torch.no_grad():
            for code, quantizer in quantizers.items():
                self._weight_quantizers[(name, code)] = quantizer
                self._weights[(name, code)] = quantizer.fake_quantize(weight)

    def _search_activations(self, name: str, codes: Sequence[int]) -> None:
        if not codes:
            return
        record = self._stats[name]
        sample = self.activation_sample(name)
        for number_format, group in formats.by_format(c for c in codes if not is_float_bits(c)):
            bits = [formats.bits_of(c) for c in group]
            observed = ActivationSample(sample, record.lo, record.hi)
            found = number_format.activation_quantizers(observed, bits, self.activation_range, self.percentile)
            self._quantizers.update({(name, code): q for code, q in zip(group, found, strict=True)})

    def apply(self, policy: Mapping[str, BitPair]) -> None:
        """Quantize every layer named in ``policy``; layers not named stay as they are."""
        for name, (w_bits, a_bits) in policy.items():
            if name not in self.modules:
                raise UserError(f"policy names layer {name!r}, which is not one of the simulated layers")
            if self._current.get(name) == (w_bits, a_bits):
                continue
            self.modules[name].weight.data = self.weight(name, w_bits)
            self._active[name] = self.activation(name, a_bits)
            self._current[name] = (w_bits, a_bits)

    def restore(self) -> None:
        """Put back the exact FP32 weights and switch activation quantization off."""
        for name, module in self.modules.items():
            module.weight.data = self.fp32_weights[name]
            self._active[name] = None
        self._current.clear()

    @contextmanager
    def applied(self, policy: Mapping[str, BitPair]) -> Iterator[QuantSimulator]:
        """Apply ``policy`` for the duration of a ``with`` block, then restore FP32."""
        self.apply(policy)
        try:
            yield self
        finally:
            self.restore()

    def detach(self) -> None:
        """Restore FP32 and remove the hooks: the model is as it was before the simulator."""
        self.restore()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._fake_quant = _InferenceFakeQuant()  # drops the scratch buffer
        release_layers(self.modules.values())

    @property
    def cached_weights(self) -> int:
        return len(self._weights)

    @property
    def cached_quantizers(self) -> int:
        return len(self._quantizers)
