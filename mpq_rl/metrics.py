"""Scores of a (quantized) model's outputs: top-1 accuracy against labels, fidelity against FP32 outputs."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mpq_rl.data import Batches
from mpq_rl.errors import UserError
from mpq_rl.layers import call_model


def output_tensor(output: Any) -> torch.Tensor:
    """The tensor a model's output stands for: itself, ``logits``/``last_hidden_state``, or a tuple's first."""
    if isinstance(output, torch.Tensor):
        return output
    for key in ("logits", "last_hidden_state"):
        value = getattr(output, key, None)
        if isinstance(value, torch.Tensor):
            return value
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise UserError(f"cannot score a model output of type {type(output).__name__}: return a tensor of logits")


@torch.no_grad()
def model_outputs(model: nn.Module, batches: Batches) -> torch.Tensor:
    """The model's outputs over every batch, concatenated along the batch dimension (as float32)."""
    was_training = model.training
    model.eval()
    try:
        return torch.cat([output_tensor(call_model(model, inputs)).float() for inputs, _ in batches])
    finally:
        model.train(was_training)


def top1(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of samples whose highest logit is the target class."""
    return float((outputs.argmax(dim=-1) == targets).float().mean())


def agreement(outputs: torch.Tensor, reference: torch.Tensor) -> float:
    """Fraction of samples whose top-1 prediction matches the FP32 model's."""
    return float((outputs.argmax(dim=-1) == reference.argmax(dim=-1)).float().mean())


def kl_divergence(outputs: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean KL(FP32 || quantized) of the softmax distributions, in nats."""
    log_p = F.log_softmax(reference, dim=-1)
    log_q = F.log_softmax(outputs, dim=-1)
    return float((log_p.exp() * (log_p - log_q)).sum(dim=-1).mean())


def cosine(outputs: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean cosine similarity between each sample's output and the FP32 output (e.g. sentence embeddings)."""
    flat_out = outputs.reshape(outputs.shape[0], -1)
    flat_ref = reference.reshape(reference.shape[0], -1)
    return float(F.cosine_similarity(flat_out, flat_ref, dim=1).mean())


def score(outputs: torch.Tensor, reference: torch.Tensor, targets: torch.Tensor | None) -> dict[str, float]:
    """Every metric that applies: ``top1`` (with targets), ``agreement``, ``kl`` and ``cosine`` against FP32."""
    metrics = {"cosine": cosine(outputs, reference)}
    if outputs.dim() == 2:
        metrics["agreement"] = agreement(outputs, reference)
        metrics["kl"] = kl_divergence(outputs, reference)
    if targets is not None:
        metrics["top1"] = top1(outputs, targets)
    return metrics
