"""llama.cpp's fixed quantization mixes (Q3_K_M, Q4_K_M, Q5_K_M) as a baseline at a bits-per-weight budget.

llama.cpp does not search: ``llama-quantize`` gives every tensor a base type and, by rule of thumb, more bits to
the tensors that hurt most, the attention values (``attn_v``) and FFN down projections (``ffn_down``) of some
blocks and the output head. The rules implemented here are those of ``llama_tensor_get_type_impl`` in
ggml-org/llama.cpp ``src/llama-quant.cpp`` (read at commit 007dbbf; the same branches are in the llama.cpp that
llama-cpp-python 0.3.36 vendors), for a dense, non-Falcon Llama of ``n`` blocks whose GQA factor is below 4, with
``more_bits(i) = i < n/8 or i >= 7n/8 or (i - n/8) % 3 == 2`` (integer division, as in C++):

========  ======  ==================================  =============================  ===========  ===========
mix       base    attn_v                              ffn_down                       attn_output  output head
========  ======  ==================================  =============================  ===========  ===========
Q3_K_M    Q3_K    Q5_K in blocks 0-1, Q4_K elsewhere  Q5_K if i < n/16, else Q4_K    Q4_K         Q6_K
Q4_K_M    Q4_K    Q6_K where more_bits(i)             Q6_K where more_bits(i)        Q4_K         Q6_K
Q5_K_M    Q5_K    Q6_K where more_bits(i)             Q6_K where more_bits(i)        Q5_K         Q6_K
========  ======  ==================================  =============================  ===========  ===========

On the k-quant ladder Q2_K < Q3_K < Q4_K < Q5_K < Q6_K each rule is a number of steps above the base. Here the
ladder is each layer's weight candidates ordered by cost (the GGUF types or group-wise formats the run searches),
so a mix is "base level, plus these steps on these layers", clipped at the top. Every base level of every mix is
proposed once, those within the budget only, costliest first: the first episode is the richest fixed mix the
budget allows. Token embeddings keep the base level (llama.cpp gives an untied embedding no extra bits; a tied
one is the output head). Activations stay at their highest candidate.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from mpq_rl.agents.base import SearchContext, Searcher, check_options
from mpq_rl.errors import UserError
from mpq_rl.search.budget import Budget, Choice

MIXES = ("Q3_K_M", "Q4_K_M", "Q5_K_M")

_ROLES = (
    ("attn_v", re.compile(r"(v_proj|attn_v)$")),
    ("ffn_down", re.compile(r"(down_proj|ffn_down)$")),
    ("attn_output", re.compile(r"(o_proj|attn_output)$")),
    ("output", re.compile(r"(^|\.)(lm_head|output)$")),
)
_BLOCK = re.compile(r"(?:layers|blk|h|block)\.(\d+)\.")


def more_bits(block: int, blocks: int) -> bool:
    """llama.cpp's ``use_more_bits``: the first and last eighth of the blocks and every third block between."""
    return block < blocks // 8 or block >= 7 * blocks // 8 or (block - blocks // 8) % 3 == 2


def role(name: str) -> str:
    """The tensor category a layer name falls in (``attn_v``, ``ffn_down``, ``attn_output``, ``output`` or
    ``other``), from Hugging Face or llama.cpp names."""
    return next((r for r, pattern in _ROLES if pattern.search(name)), "other")


def block_of(name: str) -> int | None:
    match = _BLOCK.search(name)
    return int(match.group(1)) if match else None


def steps(mix: str, name: str, blocks: int) -> int:
    """How many ladder steps above the base ``mix`` puts layer ``name`` of a ``blocks``-block model."""
    kind, block = role(name), block_of(name)
    if kind == "output":
        return {"Q3_K_M": 3, "Q4_K_M": 2, "Q5_K_M": 1}[mix]
    if block is None or kind not in ("attn_v", "ffn_down", "attn_output"):
        return 0
    if mix == "Q3_K_M":
        if kind == "attn_v":
            return 2 if block < 2 else 1
        if kind == "ffn_down":
            return 2 if block < blocks // 16 else 1
        return 1
    if kind == "attn_output" or not more_bits(block, blocks):
        return 0
    return 2 if mix == "Q4_K_M" else 1


def fixed_mix_choices(budget: Budget, mixes: Sequence[str] = MIXES) -> list[list[Choice]]:
    """Every (mix, base level) policy that fits ``budget``, costliest first, without repeats; a
    :class:`UserError` if none does."""
    top_a = len(budget.activation_bits) - 1
    ladders = [
        [
            int(w)
            for w in np.argsort(budget.costs[s, :, top_a], kind="stable")
            if not math.isnan(budget.costs[s, w, top_a])
        ]
        for s in range(len(budget.names))
    ]
    blocks = 1 + max((block_of(n) or 0) for n in budget.names)
    levels = max(len(ladder) for ladder in ladders)
    seen: set[tuple[Choice, ...]] = set()
    fitting = []
    for mix in mixes:
        for base in range(levels):
            policy = tuple(
                (ladder[min(base + steps(mix, name, blocks), len(ladder) - 1)], top_a)
                for name, ladder in zip(budget.names, ladders, strict=True)
            )
            if policy not in seen and budget.fits(policy):
                seen.add(policy)
                fitting.append(list(policy))
    if not fitting:
        raise UserError(
            f"no fixed mix ({', '.join(mixes)}) fits the budget of {budget.fraction:g} x the reference "
            f"{budget.metric}: each mix gives some layers more bits than its base; raise the budget"
        )
    fitting.sort(key=budget.total, reverse=True)
    return fitting


class FixedMix(Searcher):
    """llama.cpp's fixed mixes at every base level that fits. ``agent.kwargs``: ``mixes`` (default all of
    Q3_K_M, Q4_K_M, Q5_K_M)."""

    def __init__(self, **kwargs: Any) -> None:
        options = check_options("fixed_mix", kwargs, {"mixes": list(MIXES)})
        unknown = [m for m in options["mixes"] if m not in MIXES]
        if unknown or not options["mixes"]:
            raise UserError(
                f"agent.kwargs.mixes for 'fixed_mix' must list some of {', '.join(MIXES)}, got {options['mixes']!r}"
            )
        self.mixes = tuple(options["mixes"])

    def search(self, context: SearchContext) -> None:
        context.score_many(fixed_mix_choices(context.problem.budget, self.mixes)[: context.remaining])
