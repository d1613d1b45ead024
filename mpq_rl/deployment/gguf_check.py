"""The consumer check of a GGUF export: its perplexity in llama.cpp against the simulation's on the same tokens.

Both sides score the same token windows (``[windows, context]`` ids, each window evaluated from an empty cache):
llama.cpp through ``llama-cpp-python`` (``logits_all=True``, one thread) on the exported file, and PyTorch on the
model whose weights went through :func:`~mpq_rl.deployment.gguf_export.ggml_roundtrip`, the same quantizer that
wrote the file. Perplexity is ``exp`` of the mean next-token negative log-likelihood over every position but the
last of each window. The two differ only by the runtime's arithmetic: llama.cpp's CPU kernels quantize the
activations to 8 bits per block of 32 (Q8_0 / Q8_1) before multiplying them by Q4/Q5/Q8 weights, and keep the KV
cache in F16. :data:`PPL_TOLERANCE` bounds the relative difference.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mpq_rl.deployment.gguf_export import ggml_roundtrip
from mpq_rl.errors import UserError

PPL_TOLERANCE = 0.01
"""Largest relative perplexity difference |runtime - simulation| / simulation the check accepts."""


def mean_nll(logits: np.ndarray, tokens: np.ndarray) -> tuple[float, int]:
    """Summed next-token negative log-likelihood of ``tokens[1:]`` under ``logits[:-1]`` (``[T, vocab]``), and
    the number of predicted tokens."""
    logits = logits[:-1].astype(np.float64)
    top = logits.max(axis=1, keepdims=True)
    log_z = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
    picked = logits[np.arange(len(logits)), tokens[1:]]
    return float((log_z - picked).sum()), len(picked)


def _perplexity(parts: list[tuple[float, int]]) -> float:
    return math.exp(sum(p[0] for p in parts) / sum(p[1] for p in parts))


def runtime_perplexity(path: str | Path, windows: torch.Tensor) -> float:
    """Perplexity of ``windows`` (``[n, context]`` token ids) in llama.cpp (llama-cpp-python, CPU, one thread)."""
    from llama_cpp import Llama

    context = int(windows.shape[1])
    llm = Llama(
        model_path=str(path), n_ctx=context, n_batch=context, logits_all=True, n_threads=1, seed=0, verbose=False
    )
    parts = []
    for window in windows.tolist():
        llm.reset()
        llm.eval(window)
        parts.append(mean_nll(np.asarray(llm.scores[:context]), np.asarray(window)))
    llm.close()
    return _perplexity(parts)


def simulated_model(model: torch.nn.Module, types: Mapping[str, str]) -> torch.nn.Module:
    """A copy of ``model`` whose named weights (``types``: module -> ggml type) are quantized like the export."""
    simulated = copy.deepcopy(model)
    modules = dict(simulated.named_modules())
    tied = bool(getattr(simulated.config, "tie_word_embeddings", False))
    for name, kind in types.items():
        target = modules["model.embed_tokens"] if tied and name == "lm_head" else modules[name]
        with torch.no_grad():
            target.weight.copy_(ggml_roundtrip(target.weight, kind))
    return simulated


@torch.no_grad()
def torch_perplexity(model: torch.nn.Module, windows: torch.Tensor, batch: int = 8) -> float:
    """Perplexity of ``windows`` under a Hugging Face causal LM in PyTorch (float32)."""
    model.eval()
    parts = []
    for start in range(0, len(windows), batch):
        chunk = windows[start : start + batch]
        logits = model(input_ids=chunk).logits.float().numpy()
        parts += [mean_nll(row, ids) for row, ids in zip(logits, chunk.numpy(), strict=True)]
    return _perplexity(parts)


@dataclass(frozen=True)
class GgufCheck:
    """Perplexity of the export in llama.cpp against the simulation (and the float model) on the same tokens."""

    runtime: str
    tokens: int
    runtime_ppl: float
    simulated_ppl: float
    float_ppl: float
    tolerance: float = PPL_TOLERANCE

    @property
    def relative_difference(self) -> float:
        return abs(self.runtime_ppl - self.simulated_ppl) / self.simulated_ppl

    @property
    def passed(self) -> bool:
        return self.relative_difference <= self.tolerance

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "relative_difference": self.relative_difference, "passed": self.passed}

    def lines(self) -> list[str]:
        return [
            f"{self.runtime} on {self.tokens} test tokens: perplexity {self.runtime_ppl:.4f}, simulation "
            f"{self.simulated_ppl:.4f} (relative difference {self.relative_difference:.2%}, tolerance "
            f"{self.tolerance:.0%}: {'met' if self.passed else 'MISSED'}); float model {self.float_ppl:.4f}"
        ]


def runtime_name() -> str:
    """The consumer that :func:`runtime_perplexity` runs, with its version."""
    try:
        import llama_cpp
    except ImportError:
        raise UserError(
            "the GGUF consumer check needs llama-cpp-python (`pip install llama-cpp-python`, it builds llama.cpp)"
        ) from None
    return f"llama.cpp (llama-cpp-python {llama_cpp.__version__})"


def check_gguf(path: str | Path, model: torch.nn.Module, types: Mapping[str, str], windows: torch.Tensor) -> GgufCheck:
    """Measure the export at ``path`` of ``model`` under ``types`` in llama.cpp against the simulation."""
    runtime = runtime_name()
    return GgufCheck(
        runtime=runtime,
        tokens=int(windows.shape[0] * (windows.shape[1] - 1)),
        runtime_ppl=runtime_perplexity(path, windows),
        simulated_ppl=torch_perplexity(simulated_model(model, types), windows),
        float_ppl=torch_perplexity(model, windows),
    )
