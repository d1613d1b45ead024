"""Scores of a (quantized) model's outputs: top-1 accuracy against labels, fidelity against FP32 outputs."""

from __future__ import annotations

import numpy as np
import torch

from mpq_rl.quantization.kernels import output_scores


def format_metric(value: float | None, key: str) -> str:
    """A score for tables: the KL divergence in nats (4 decimals), every other metric in percent; ``-`` if absent."""
    if value is None:
        return "-"
    return f"{value:.4f}" if key == "kl" else f"{100 * value:.2f}%"


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


def cosine(outputs: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean cosine similarity between each sample's output and the FP32 output (e.g. sentence embeddings)."""
    return Scorer(reference, None)(outputs)["cosine"]


class Scorer:
    """:func:`score` against one fixed FP32 ``reference`` (and ``targets``), for scoring many outputs.

    What depends only on the reference is computed once (its unit rows, top-1, softmax ``p`` and mean ``sum p log
    p``); each call is then one pass of :func:`mpq_rl.quantization.kernels.output_scores` over the outputs, with ``KL(p
    || q) =
    sum p log p - sum p log q``.
    """

    def __init__(self, reference: torch.Tensor, targets: torch.Tensor | None) -> None:
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
