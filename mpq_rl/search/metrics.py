"""Scores of a (quantized) model's outputs: top-1 accuracy against labels, fidelity against FP32 outputs."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from mpq_rl.errors import UserError
from mpq_rl.quantization.kernels import output_scores
from mpq_rl.workloads.data import Batches
from mpq_rl.workloads.layers import call_model


def format_metric(value: float | None, key: str) -> str:
    """A score for tables: the KL divergence in nats (4 decimals), every other metric in percent; ``-`` if absent."""
    if value is None:
        return "-"
    return f"{value:.4f}" if key == "kl" else f"{100 * value:.2f}%"


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


def _numpy(values: torch.Tensor) -> np.ndarray:
    """Outputs as float64 samples x features, for what NumPy computes once per reference and for top-1; each
    evaluation's outputs go to the scoring kernel as float32 instead (:meth:`Scorer.__call__`)."""
    array = values.detach().cpu().numpy().astype(np.float64)
    return array.reshape(array.shape[0], -1)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _unit_rows(values: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(values, axis=1, keepdims=True)
    return values / np.maximum(norms, COSINE_EPS)


COSINE_EPS = 1e-8
"""Norm floor in the cosine similarity (as ``torch.nn.functional.cosine_similarity``)."""


def top1(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of samples whose highest logit is the target class."""
    return float(np.mean(_numpy(outputs).argmax(axis=-1) == targets.cpu().numpy()))


def agreement(outputs: torch.Tensor, reference: torch.Tensor) -> float:
    """Fraction of samples whose top-1 prediction matches the FP32 model's."""
    return Scorer(reference, None)(outputs)["agreement"]


def kl_divergence(outputs: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean KL(FP32 || quantized) of the softmax distributions, in nats."""
    return Scorer(reference, None)(outputs)["kl"]


def cosine(outputs: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean cosine similarity between each sample's output and the FP32 output (e.g. sentence embeddings)."""
    return Scorer(reference, None)(outputs)["cosine"]


class Scorer:
    """:func:`score` against one fixed FP32 ``reference`` (and ``targets``), for scoring many outputs.

    What depends only on the reference is computed once (its unit rows, top-1, softmax ``p`` and mean ``sum p log
    p``); each call is then one pass of :func:`mpq_rl.quantization.kernels.output_scores` over the outputs, with ``KL(p
    || q) =
    sum p log p - sum p log q``.

    Sequence outputs (``[batch, positions, vocabulary]``, a language model's next-token logits) are scored per
    position by :class:`mpq_rl.search.token_metrics.TokenScorer`.
    """

    def __init__(self, reference: torch.Tensor, targets: torch.Tensor | None) -> None:
        from mpq_rl.search.token_metrics import TokenScorer

        self.tokens = TokenScorer(reference, targets) if reference.dim() == 3 else None
        if self.tokens is not None:
            return
        self.classifier = reference.dim() == 2
        ref = _numpy(reference)
        self.samples = len(ref)
        self.reference_unit = np.ascontiguousarray(_unit_rows(ref))
        self.reference_top1 = ref.argmax(axis=-1).astype(np.int64)
        log_p = _log_softmax(ref) if self.classifier else np.zeros((0, 0))
        self.p = np.ascontiguousarray(np.exp(log_p))
        self.p_log_p = float(np.sum(self.p * log_p)) / self.samples
        self.targets = None if targets is None else targets.cpu().numpy().astype(np.int64)
        self._kernel_targets = self.targets if self.targets is not None else np.zeros(0, dtype=np.int64)

    def __call__(self, outputs: torch.Tensor) -> dict[str, float]:
        if self.tokens is not None:
            return self.tokens(outputs)
        out = outputs.detach().cpu().float().reshape(len(outputs), -1).contiguous().numpy()
        if out.shape != self.reference_unit.shape:
            raise ValueError(f"outputs of shape {tuple(out.shape)} do not match the reference's")
        cosine, agreement, cross, top1 = output_scores()(
            out, self.reference_unit, self.reference_top1, self.p, self._kernel_targets
        )
        metrics = {"cosine": cosine / self.samples}
        if self.classifier:
            metrics["agreement"] = agreement / self.samples
            metrics["kl"] = max(self.p_log_p - cross / self.samples, 0.0)  # >= 0; rounding can go below by 1e-16
        if self.targets is not None:
            metrics["top1"] = top1 / self.samples
        return metrics


def score(outputs: torch.Tensor, reference: torch.Tensor, targets: torch.Tensor | None) -> dict[str, float]:
    """Every metric that applies: ``top1`` (with targets), ``agreement``, ``kl`` and ``cosine`` against FP32."""
    return Scorer(reference, targets)(outputs)
