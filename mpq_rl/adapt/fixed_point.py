"""Fixed-point numbers ``(wl, fl)``: a ``wl``-bit two's-complement integer times ``2^-fl``.

A fixed-point format is the project's per-tensor integer quantizer (:class:`~mpq_rl.quantization.quant.QuantParams`)
with scale ``2^-fl``, zero point 0 and levels ``[-2^(wl-1), 2^(wl-1) - 1]``: calling it fake-quantizes with the
fused kernel and a straight-through gradient (the forward pass of training), ``values`` rounds without building
the gradient mask (the rule's measurements). Gradients are rounded stochastically (:func:`stochastic_round`), as
AdaPT and MuPPET do, so that updates smaller than one step still move the weights on average.
"""

from __future__ import annotations

import torch

from mpq_rl.quantization.quant import QuantParams


def fixed_point(wl: int, fl: int) -> QuantParams:
    """The quantizer of the fixed-point format with word length ``wl`` and fractional length ``fl``."""
    if not 1 <= wl <= 32:
        raise ValueError(f"word length must be 1 to 32 bits, got {wl}")
    return QuantParams(2.0**-fl, 0, -(2 ** (wl - 1)), 2 ** (wl - 1) - 1)


def stochastic_round(x: torch.Tensor, wl: int, fl: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``x`` on the ``(wl, fl)`` grid, rounded up with probability equal to the fraction of a step it lies above a
    level (so the expected value is ``x`` inside the range), clamped to the range."""
    q = fixed_point(wl, fl)
    steps = x * (1.0 / q.scale)
    # drawn on the CPU, whatever the device, so a seed gives the same rounding everywhere
    noise = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    return torch.clamp(torch.floor(steps + noise), q.q_min, q.q_max) * q.scale
