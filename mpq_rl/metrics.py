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
    # Switching modes walks every module (a cost per call on a big model); skip it when all are in eval mode.
    switch = any(module.training for module in model.modules())
    if switch:
        model.eval()
    try:
        return torch.cat([output_tensor(call_model(model, inputs)).float() for inputs, _ in batches])
    finally:
        if switch:
            model.train(was_training)


def _fraction_equal(predicted: torch.Tensor, expected: torch.Tensor) -> float:
    return float((predicted == expected).float().mean())


def _kl(log_p: torch.Tensor, p: torch.Tensor, outputs: torch.Tensor) -> float:
    return float((p * (log_p - F.log_softmax(outputs, dim=-1))).sum(dim=-1).mean())


def top1(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of samples whose highest logit is the target class."""
    return _fraction_equal(outputs.argmax(dim=-1), targets)


def agreement(outputs: torch.Tensor, reference: torch.Tensor) -> float:
    """Fraction of samples whose top-1 prediction matches the FP32 model's."""
    return _fraction_equal(outputs.argmax(dim=-1), reference.argmax(dim=-1))


def kl_divergence(outputs: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean KL(FP32 || quantized) of the softmax distributions, in nats."""
    log_p = F.log_softmax(reference, dim=-1)
    return _kl(log_p, log_p.exp(), outputs)


def cosine(outputs: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean cosine similarity between each sample's output and the FP32 output (e.g. sentence embeddings)."""
    flat_out = outputs.reshape(outputs.shape[0], -1)
    flat_ref = reference.reshape(reference.shape[0], -1)
    return float(F.cosine_similarity(flat_out, flat_ref, dim=1).mean())


class Scorer:
    """:func:`score` against one fixed FP32 ``reference`` (and ``targets``), for scoring many outputs.

    What depends only on the reference (its softmax and top-1) is computed once, on first use, instead of on
    every call; the numbers are :func:`score`'s, bit for bit.
    """

    def __init__(self, reference: torch.Tensor, targets: torch.Tensor | None) -> None:
        self.reference = reference
        self.targets = targets
        self._derived: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def __call__(self, outputs: torch.Tensor) -> dict[str, float]:
        metrics = {"cosine": cosine(outputs, self.reference)}
        if outputs.dim() != 2 and self.targets is None:
            return metrics
        predicted = outputs.argmax(dim=-1)
        if outputs.dim() == 2:
            if self._derived is None:
                log_p = F.log_softmax(self.reference, dim=-1)
                self._derived = (self.reference.argmax(dim=-1), log_p, log_p.exp())
            reference_top1, log_p, p = self._derived
            metrics["agreement"] = _fraction_equal(predicted, reference_top1)
            metrics["kl"] = _kl(log_p, p, outputs)
        if self.targets is not None:
            metrics["top1"] = _fraction_equal(predicted, self.targets)
        return metrics


def score(outputs: torch.Tensor, reference: torch.Tensor, targets: torch.Tensor | None) -> dict[str, float]:
    """Every metric that applies: ``top1`` (with targets), ``agreement``, ``kl`` and ``cosine`` against FP32."""
    return Scorer(reference, targets)(outputs)
