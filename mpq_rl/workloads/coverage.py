"""Which of a model's weights the layer table covers: every parameter that multiplies an activation, found by use.

A weight counts when a forward pass hands it to a linear, convolution, matrix-product or attention function
(``F.linear``, ``F.conv*``, ``torch.matmul``, ``@``, ``einsum``, ``F.multi_head_attention_forward``, ...),
whether a module the discovery knows calls it or user code does through ``torch.nn.functional``. Embedding tables
(gathers), normalization scales and biases (1-D) and added parameters (positional embeddings) are not weights in
this sense: a mixed-precision deployment quantizes the multiplications.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

WEIGHT_FUNCTIONS = frozenset(
    {
        F.linear,
        F.bilinear,
        F.conv1d,
        F.conv2d,
        F.conv3d,
        F.conv_transpose1d,
        F.conv_transpose2d,
        F.conv_transpose3d,
        F.multi_head_attention_forward,
        torch.matmul,
        torch.mm,
        torch.bmm,
        torch.addmm,
        torch.baddbmm,
        torch.einsum,
        torch.tensordot,
        torch.Tensor.matmul,
        torch.Tensor.__matmul__,
        torch.Tensor.__rmatmul__,
        torch.Tensor.mm,
        torch.Tensor.bmm,
    }
)
"""The functions whose parameter operands are weights a deployment quantizes."""


class _WeightUses(TorchFunctionMode):
    def __init__(self, parameters: dict[int, str]) -> None:
        super().__init__()
        self.parameters = parameters
        self.used: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in WEIGHT_FUNCTIONS:
            for value in _flatten((args, kwargs)):
                name = self.parameters.get(id(value))
                if name is not None and value.dim() >= 2:
                    self.used.add(name)
        return func(*args, **kwargs)


def _flatten(value: object) -> Iterator[object]:
    if isinstance(value, (tuple, list)):
        for item in value:
            yield from _flatten(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _flatten(item)
    else:
        yield value


@contextmanager
def weight_uses(model: nn.Module) -> Iterator[set[str]]:
    """Within the block, record the names of ``model``'s parameters used as weights (the set fills as it runs)."""
    mode = _WeightUses({id(p): name for name, p in model.named_parameters()})
    with mode:
        yield mode.used
