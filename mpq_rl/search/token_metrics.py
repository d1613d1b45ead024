"""Scores of a language model's next-token logits against the float model's, per token position.

Outputs are ``[batch, positions, vocabulary]`` logits; every position is one prediction. ``kl`` is the mean
``KL(p || q)`` of the float model's next-token distribution ``p`` to the quantized model's ``q`` (nats; the
label-free proxy llama.cpp's ``--kl-divergence``, EvoPress and ModelOpt use), ``agreement`` the share of positions
whose most likely token is the float model's, and, with targets (the next tokens), ``top1`` the next-token accuracy
and ``nll`` the mean negative log-likelihood (nats; the perplexity is ``exp(nll)``). One ``log_softmax``, one
row-wise dot product and one ``argmax`` over the outputs (float32, vectorized; sums over positions in float64):
on a wide vocabulary this costs a fraction of the forward pass. Cosine similarity of logits means little for a
language model and is not computed.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


class TokenScorer:
    """Scores of many outputs against one fixed float ``reference`` ``[B, T, V]`` (and ``targets`` ``[B, T]``);
    what depends only on the reference (``p``, ``sum p log p`` per position, its top-1) is computed once."""

    def __init__(self, reference: torch.Tensor, targets: torch.Tensor | None) -> None:
        rows = reference.detach().float().flatten(0, 1)
        log_p = F.log_softmax(rows, dim=1)
        self.p = log_p.exp()
        self.p_log_p = torch.einsum("ij,ij->i", self.p, log_p).double()
        self.reference_top1 = rows.argmax(dim=1)
        self.targets = None if targets is None else targets.flatten().to(rows.device).unsqueeze(1)

    def __call__(self, outputs: torch.Tensor) -> dict[str, float]:
        rows = outputs.detach().float().flatten(0, 1)
        if rows.shape != self.p.shape:
            raise ValueError(f"outputs of shape {tuple(outputs.shape)} do not match the reference's")
        top1 = rows.argmax(dim=1)
        log_q = F.log_softmax(rows, dim=1)
        # KL(p || q) = sum p log p - sum p log q, per position
        kl = self.p_log_p - torch.einsum("ij,ij->i", self.p, log_q).double()
        metrics = {"agreement": float((top1 == self.reference_top1).double().mean()), "kl": max(float(kl.mean()), 0.0)}
        if self.targets is not None:
            metrics["top1"] = float((top1 == self.targets[:, 0]).double().mean())
            metrics["nll"] = -float(log_q.gather(1, self.targets).double().mean())
        return metrics
