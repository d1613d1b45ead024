"""Which quantizer holds a layer: a simulator or LSQ marks the modules it hooks, so two never stack on one layer."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from torch import nn

from mpq_rl.errors import UserError

_QUANTIZED_BY = "_mpq_rl_quantized_by"
"""The attribute that marks a module as hooked by a quantizer (a simulator, LSQ), naming which."""


def claim_layers(modules: Mapping[str, nn.Module], holder: str) -> None:
    """Mark ``modules`` (by name) as quantized by ``holder`` (e.g. "simulated by a QuantSimulator"), or raise a
    :class:`UserError` naming the first one another quantizer already holds: two on one layer would stack."""
    for name, module in modules.items():
        other = getattr(module, _QUANTIZED_BY, None)
        if other is not None:
            raise UserError(f"layer {name!r} is already {other}: detach() that one first (or build the model again)")
    for module in modules.values():
        setattr(module, _QUANTIZED_BY, holder)


def release_layers(modules: Iterable[nn.Module]) -> None:
    """Remove the mark of :func:`claim_layers`."""
    for module in modules:
        if hasattr(module, _QUANTIZED_BY):
            delattr(module, _QUANTIZED_BY)
