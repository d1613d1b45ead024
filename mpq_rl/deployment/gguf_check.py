"""A run's policy exported to GGUF and checked in llama.cpp: its perplexity there against the simulation's.

:func:`export_policy_gguf` writes the workload's causal LM with the policy's weight types
(:mod:`mpq_rl.deployment.gguf_export`) and scores the same test token windows three ways, each window from an
empty cache: llama.cpp through ``llama-cpp-python`` on the file (``logits_all=True``, one thread), the project's
simulator applying the policy (:class:`~mpq_rl.quantization.simulator.QuantSimulator`, the quantizers of
:mod:`mpq_rl.quantization.groupwise`), and the float model. Perplexity is ``exp`` of the mean next-token negative
log-likelihood over the full vocabulary at every position but the last of each window.

The file's weights equal the simulator's bit for bit, so the runtime and the simulation differ only by llama.cpp's
arithmetic: its CPU kernels quantize activations to 8 bits per block of 32 (Q8_0 / Q8_1) before multiplying them
by Q4/Q5/Q8 weights, and keep the KV cache in F16. :data:`PPL_TOLERANCE` bounds the relative difference.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mpq_rl.deployment.gguf_export import GgufExport, export_gguf, ggml_type_of
from mpq_rl.errors import UserError
from mpq_rl.io import atomic_write_json
from mpq_rl.quantization.policy import BitPair
from mpq_rl.search.evaluator import calibrated_simulator
from mpq_rl.workloads.workload import Workload

PPL_TOLERANCE = 0.01
"""Largest relative perplexity difference ``|runtime - simulation| / simulation`` the check accepts."""
LM_PREFIX = "lm."
"""Layer names of a causal-LM workload start here (``CausalLM.lm``, the Hugging Face model)."""


def nll_sum(logits: np.ndarray, tokens: np.ndarray) -> tuple[float, int]:
    """Summed negative log-likelihood of ``tokens[1:]`` under ``logits[:-1]`` (``[T, vocab]``), and its count."""
    logits = logits[:-1].astype(np.float64)
    top = logits.max(axis=1, keepdims=True)
    log_z = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
    picked = logits[np.arange(len(logits)), tokens[1:]]
    return float((log_z - picked).sum()), len(picked)


def _perplexity(parts: list[tuple[float, int]]) -> float:
    return math.exp(sum(p[0] for p in parts) / sum(p[1] for p in parts))


def runtime_name() -> str:
    """The consumer that :func:`runtime_perplexity` runs, with its version."""
    try:
        import llama_cpp
    except ImportError:
        raise UserError(
            "checking a GGUF export needs llama-cpp-python (`pip install llama-cpp-python`, it builds llama.cpp)"
        ) from None
    return f"llama.cpp (llama-cpp-python {llama_cpp.__version__})"


def runtime_perplexity(path: str | Path, windows: torch.Tensor) -> float:
    """Perplexity of ``windows`` (``[n, context]`` token ids) in llama.cpp (llama-cpp-python, CPU, one thread)."""
    from llama_cpp import Llama

    context = int(windows.shape[1])
    llm = Llama(model_path=str(path), n_ctx=context, n_batch=context, logits_all=True, n_threads=1, verbose=False)
    try:
        parts = []
        for window in windows.tolist():
            llm.reset()
            llm.eval(window)
            parts.append(nll_sum(np.asarray(llm.scores[:context]), np.asarray(window)))
    finally:
        llm.close()
    return _perplexity(parts)


@torch.no_grad()
def torch_perplexity(lm: torch.nn.Module, windows: torch.Tensor, batch: int = 16) -> float:
    """Perplexity of ``windows`` under a Hugging Face causal LM in PyTorch."""
    parts = []
    for start in range(0, len(windows), batch):
        chunk = windows[start : start + batch]
        logits = lm(input_ids=chunk, use_cache=False).logits.float().numpy()
        parts += [nll_sum(row, ids) for row, ids in zip(logits, chunk.numpy(), strict=True)]
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

    def line(self) -> str:
        return (
            f"{self.runtime} on {self.tokens} test tokens: perplexity {self.runtime_ppl:.4f}, simulation "
            f"{self.simulated_ppl:.4f} (relative difference {self.relative_difference:.3%}, tolerance "
            f"{self.tolerance:.0%}: {'met' if self.passed else 'MISSED'}); float model {self.float_ppl:.4f}"
        )


def test_windows(workload: Workload) -> torch.Tensor:
    """The workload's test token sequences, ``[n, length]`` (batches of ``input_ids``, or of ``{"input_ids": ...}``)."""
    if workload.test is None:
        raise UserError("checking a GGUF export needs test data: the run's data section gives none")
    batches = [inputs["input_ids"] if isinstance(inputs, dict) else inputs for inputs, _ in workload.test]
    return torch.cat(batches).cpu()


def export_policy_gguf(
    workload: Workload,
    policy: Mapping[str, BitPair],
    output: str | Path,
    check: bool = True,
    require_agreement: bool = True,
) -> tuple[GgufExport, GgufCheck | None]:
    """Write the workload's causal LM under ``policy`` to ``output`` (GGUF), and with ``check`` measure it in
    llama.cpp against the simulation; ``<output>.json`` records the types and the check. With
    ``require_agreement``, a check outside the tolerance is a :class:`UserError` after the files are written."""
    lm = getattr(workload.model, "lm", None)
    if lm is None:
        raise UserError("GGUF export is for causal language models (model.name: tinylm or causal_lm)")
    full = workload.full_policy(dict(policy))
    types = {name.removeprefix(LM_PREFIX): ggml_type_of(w) for name, (w, _) in full.items()}
    runtime = runtime_name() if check else None
    written = export_gguf(lm, types, output)
    result = None
    if runtime is not None:
        windows = test_windows(workload)
        simulator = calibrated_simulator(workload)
        try:
            with simulator.applied(full):
                simulated = torch_perplexity(lm, windows)
        finally:
            simulator.detach()
        result = GgufCheck(
            runtime=runtime,
            tokens=int(windows.shape[0] * (windows.shape[1] - 1)),
            runtime_ppl=runtime_perplexity(written.path, windows),
            simulated_ppl=simulated,
            float_ppl=torch_perplexity(lm, windows),
        )
    atomic_write_json(
        Path(str(output) + ".json"),
        {
            "tensor_types": written.tensor_types,
            "size_bytes": written.size_bytes,
            "overrides": written.overrides_path.name,
            "check": None if result is None else result.to_dict(),
        },
    )
    if require_agreement and result is not None and not result.passed:
        raise UserError(result.line())
    return written, result
