"""``nn.MultiheadAttention`` run through its projections, so each projection is a layer like any ``nn.Linear``.

PyTorch's attention hands its weights straight to ``F.multi_head_attention_forward`` (or a fused kernel): its
query/key/value projection never runs as a module and its ``out_proj`` is never called, so hooks (layer discovery,
the simulator's input quantizers, LSQ parametrizations, export markers) would see none of them. :func:`route`
swaps each attention module's class for one whose forward computes the same attention from module calls:

* ``<attention>.in_proj``: one :class:`InputProjection` over the packed ``in_proj_weight`` [3E, E] (the usual case,
  ``kdim == vdim == embed_dim``). One layer, not three: query, key and value read the same input in
  self-attention, deployments run them as one packed GEMM with one input quantizer, and a third of the search
  dimensions suffice. Cross-attention calls it once per distinct input, on the rows it needs.
* ``<attention>.q_proj`` / ``k_proj`` / ``v_proj`` when the attention has separate weights (``kdim`` or ``vdim``
  differs): three layers, since their inputs and shapes differ.
* ``<attention>.out_proj``: the attention's own ``nn.Linear``, now called as a module.

The projections share the attention's parameters (nothing is copied and ``state_dict`` is unchanged). Routing is
permanent on the model: the attention runs the unfused path (the same arithmetic as PyTorch's, up to float
rounding), a no-op pre-hook keeps ``nn.TransformerEncoderLayer`` off its fused kernel, and
``nn.TransformerEncoder`` stops converting padded batches to nested tensors. Subclasses of the attention and
attention with ``add_bias_kv`` or ``add_zero_attn`` are not routed; layer discovery reports their weights as not
covered.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

PROJECTIONS = "_mpq_rl_projections"
"""Attribute of a routed attention module: its projection layers by suffix (``in_proj``, ``q_proj``, ...)."""


class InputProjection(nn.Linear):
    """One input projection of an ``nn.MultiheadAttention``, sharing the attention's weight and bias.

    ``rows`` selects this projection's slice of ``in_proj_bias``; a call may ask for a subset of the output rows
    (``forward(x, rows)``), as cross-attention does with the packed weight.
    """

    def __init__(self, attention: nn.MultiheadAttention, weight_name: str, rows: slice) -> None:
        nn.Module.__init__(self)
        self.weight = getattr(attention, weight_name)
        self.out_features, self.in_features = self.weight.shape
        self._owner = (attention,)  # a tuple, so the attention is not registered as a child of its projection
        self.rows = rows

    @property
    def bias(self) -> Tensor | None:
        bias = self._owner[0].in_proj_bias
        return None if bias is None else bias[self.rows]

    def forward(self, x: Tensor, rows: slice | None = None) -> Tensor:
        weight, bias = self.weight, self.bias
        if rows is not None:
            weight, bias = weight[rows], None if bias is None else bias[rows]
        return F.linear(x, weight, bias)


def _no_op(module: nn.Module, args: tuple) -> None:
    return None


class RoutedMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` computed from its projection modules (see the module docstring)."""

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        if is_causal and attn_mask is None:
            raise RuntimeError("Need attn_mask if specifying the is_causal hint.")
        batched = query.dim() == 3
        if not batched:
            query, key, value = _each(lambda x: x.unsqueeze(0), query, key, value)
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = _each(lambda x: x.transpose(0, 1), query, key, value)
        key_padding_mask = F._canonical_mask(
            mask=key_padding_mask,
            mask_name="key_padding_mask",
            other_type=F._none_or_dtype(attn_mask),
            other_name="attn_mask",
            target_type=query.dtype,
        )
        attn_mask = F._canonical_mask(
            mask=attn_mask, mask_name="attn_mask", other_type=None, other_name="", target_type=query.dtype
        )
        batch, target, source = query.shape[0], query.shape[1], key.shape[1]
        heads, head_dim = self.num_heads, self.embed_dim // self.num_heads
        q, k, v = self._project(query, key, value)
        q, k, v = (x.reshape(batch, -1, heads, head_dim).transpose(1, 2) for x in (q, k, v))
        mask = None
        if attn_mask is not None:
            mask = attn_mask.reshape(-1, heads, target, source) if attn_mask.dim() == 3 else attn_mask
        if key_padding_mask is not None:
            padding = key_padding_mask.reshape(batch, 1, 1, source)
            mask = padding if mask is None else mask + padding
        dropout = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = q @ k.transpose(-2, -1) * (1.0 / math.sqrt(head_dim))
            weights = torch.softmax(scores if mask is None else scores + mask, dim=-1)
            if dropout > 0:
                weights = F.dropout(weights, dropout)
            output = weights @ v
            if average_attn_weights:
                weights = weights.mean(dim=1)
            if not batched:
                weights = weights.squeeze(0)
        else:
            output = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        output = self.out_proj(output.transpose(1, 2).reshape(batch, target, self.embed_dim))
        if not batched:
            output = output.squeeze(0)
        elif not self.batch_first:
            output = output.transpose(0, 1)
        return output, weights

    def _project(self, query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        projections = getattr(self, PROJECTIONS)
        if "in_proj" not in projections:
            return projections["q_proj"](query), projections["k_proj"](key), projections["v_proj"](value)
        packed, width = projections["in_proj"], self.embed_dim
        if query is key and key is value:
            return packed(query).chunk(3, dim=-1)
        q = packed(query, slice(0, width))
        if key is value:
            k, v = packed(key, slice(width, 3 * width)).chunk(2, dim=-1)
            return q, k, v
        return q, packed(key, slice(width, 2 * width)), packed(value, slice(2 * width, 3 * width))


def _each(fn: Callable[[Tensor], Tensor], query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``fn`` of each input, keeping ``query is key`` and ``key is value`` true where they were (self-attention
    then projects its input once)."""
    if query is key and key is value:
        x = fn(query)
        return x, x, x
    if key is value:
        x = fn(key)
        return fn(query), x, x
    return fn(query), fn(key), fn(value)


def routable(module: nn.Module) -> bool:
    """Whether ``module`` is an attention that :func:`route` can run through its projections."""
    return (
        isinstance(module, nn.MultiheadAttention)
        and type(module) in (nn.MultiheadAttention, RoutedMultiheadAttention)
        and module.bias_k is None
        and not module.add_zero_attn
    )


def route(model: nn.Module) -> dict[str, nn.Module]:
    """Route every routable attention of ``model`` (idempotent); return the projection layers by name."""
    projections: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.TransformerEncoder):
            module.use_nested_tensor = False
        if not routable(module):
            continue
        if not hasattr(module, PROJECTIONS):
            _route_one(module)
        prefix = f"{name}." if name else ""
        projections.update({f"{prefix}{suffix}": p for suffix, p in getattr(module, PROJECTIONS).items()})
    return projections


def _route_one(attention: nn.MultiheadAttention) -> None:
    width = attention.embed_dim
    if attention._qkv_same_embed_dim:
        layers = {"in_proj": InputProjection(attention, "in_proj_weight", slice(0, 3 * width))}
    else:
        layers = {
            f"{part}_proj": InputProjection(attention, f"{part}_proj_weight", slice(i * width, (i + 1) * width))
            for i, part in enumerate("qkv")
        }
    object.__setattr__(attention, PROJECTIONS, layers)
    attention.__class__ = RoutedMultiheadAttention
    attention.register_forward_pre_hook(_no_op)  # nn.TransformerEncoderLayer skips its fused kernel when hooked
