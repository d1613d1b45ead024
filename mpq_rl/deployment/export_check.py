"""What an export delivers, measured: onnxruntime against the simulation, file size and latency against FP32.

Agreement is measured on the calibration split: top-1 agreement of the two models' predictions for labelled data,
mean cosine similarity of their outputs (per sample, flattened) for unlabelled data such as sentence embeddings.
Latency is the median wall time of one calibration batch in onnxruntime (CPU, ``threads`` intra-op threads, all
graph optimizations on), for the quantized graph and for the FP32 graph exported the same way, run alternately so
that both see the same machine. ``integer_kernels`` counts the nodes onnxruntime actually runs in low precision
after its graph optimizations (QDQ fusion into ``QLinearConv``, ``MatMulIntegerToFloat``, ...): Q/DQ pairs it
cannot fuse run as float arithmetic and make the quantized graph slower, not faster. ``layer_kernels`` names the
kernel of every quantized layer (:mod:`mpq_rl.deployment.kernels`), summed up per layer kind in :meth:`lines`,
with one line on why when the quantized graph is not faster.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mpq_rl.deployment.kernels import kernel_summary, layer_kernels, session, why_not_faster
from mpq_rl.errors import UserError
from mpq_rl.workloads.data import Batches

LATENCY_SECONDS = 1.0
"""Wall time spent timing each graph (at least 3 runs each)."""


@dataclass(frozen=True)
class ExportCheck:
    """The measured facts about one export (see the module docstring)."""

    measure: str
    agreement: float
    samples: int
    size_bytes: int
    fp32_size_bytes: int
    threads: int
    latency_s: float
    fp32_latency_s: float
    integer_kernels: dict[str, int]
    layer_kernels: dict[str, str] = field(default_factory=dict)
    layer_kinds: dict[str, str] = field(default_factory=dict)
    float_reasons: dict[str, str] = field(default_factory=dict)

    @property
    def speedup(self) -> float:
        return self.fp32_latency_s / self.latency_s

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        kernels = ", ".join(f"{op} x{n}" for op, n in sorted(self.integer_kernels.items())) or "none"
        return [
            f"onnxruntime vs simulation on {self.samples} calibration samples: {self.measure} {self.agreement:.4f}",
            f"size: {self.size_bytes / 1e6:.2f} MB vs {self.fp32_size_bytes / 1e6:.2f} MB FP32 "
            f"({self.size_bytes / self.fp32_size_bytes:.2f}x)",
            f"onnxruntime latency per batch ({self.threads} thread{'s' * (self.threads != 1)}): "
            f"{self.latency_s * 1e3:.2f} ms vs {self.fp32_latency_s * 1e3:.2f} ms FP32 "
            f"({self.speedup:.2f}x speed-up); low-precision kernels: {kernels}",
            *(f"  {line}" for line in kernel_summary(self.layer_kernels, self.layer_kinds)),
            *([f"not faster: {self.why_not_faster()}"] if self.speedup <= 1.0 else []),
        ]

    def why_not_faster(self) -> str:
        return why_not_faster(self.layer_kernels, self.layer_kinds, self.float_reasons)


def feed(inputs: Any, names: list[str]) -> dict[str, np.ndarray]:
    """The onnxruntime input dict of one batch (a tensor, or a dict of tensors)."""
    if isinstance(inputs, torch.Tensor):
        return {names[0]: inputs.numpy()}
    return {name: inputs[name].numpy() for name in names}


def agreement(outputs: np.ndarray, reference: np.ndarray, labelled: bool) -> tuple[str, float]:
    """Top-1 agreement (labelled data) or mean per-sample cosine similarity of ``outputs`` to ``reference``."""
    if labelled:
        return "top-1 agreement", float((outputs.argmax(1) == reference.argmax(1)).mean())
    a, b = outputs.reshape(len(outputs), -1), reference.reshape(len(reference), -1)
    cosine = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return "cosine", float(cosine.mean())


def _integer_kernels(optimized: Path) -> dict[str, int]:
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(optimized)).graph.node:
        op = node.op_type
        if op.startswith("QLinear") or "Integer" in op or op in ("MatMulNBits", "QGemm", "QAttention"):
            counts[op] = counts.get(op, 0) + 1
    return counts


def _median_latencies(sessions: list, batch: dict[str, np.ndarray]) -> list[float]:
    times: list[list[float]] = [[] for _ in sessions]
    for s in sessions:
        s.run(None, batch)  # warm-up
    deadline = time.perf_counter() + LATENCY_SECONDS * len(sessions)
    while time.perf_counter() < deadline or len(times[0]) < 3:
        for s, record in zip(sessions, times, strict=True):
            started = time.perf_counter()
            s.run(None, batch)
            record.append(time.perf_counter() - started)
    return [statistics.median(record) for record in times]


def check_export(
    quantized: bytes,
    fp32: bytes,
    names: list[str],
    batches: Batches,
    simulated: np.ndarray,
    threads: int = 1,
    kinds: Mapping[str, str] | None = None,
    reasons: Mapping[str, str] | None = None,
) -> ExportCheck:
    """Run both graphs in onnxruntime: agreement of the quantized one with ``simulated`` (the simulation's outputs
    on ``batches``), sizes, latencies and the kernels onnxruntime runs (per layer of ``kinds``, with the
    ``reasons`` its float32 layers got no integer kernel)."""
    import onnx

    kinds = dict(kinds or {})
    with tempfile.TemporaryDirectory() as folder:
        optimized = Path(folder) / "optimized.onnx"
        runtime = session(quantized, threads, optimized)
        kernels = _integer_kernels(optimized)
        per_layer = layer_kernels(onnx.load(str(optimized)), list(kinds))
    outputs = np.concatenate([runtime.run(None, feed(inputs, names))[0] for inputs, _ in batches])
    measure, value = agreement(outputs, simulated, batches.has_targets)
    first = feed(batches.example(), names)
    latency, fp32_latency = _median_latencies([runtime, session(fp32, threads)], first)
    return ExportCheck(
        measure=measure,
        agreement=value,
        samples=len(outputs),
        size_bytes=len(quantized),
        fp32_size_bytes=len(fp32),
        threads=threads,
        latency_s=latency,
        fp32_latency_s=fp32_latency,
        integer_kernels=kernels,
        layer_kernels=per_layer,
        layer_kinds=kinds,
        float_reasons={name: why for name, why in (reasons or {}).items() if name in per_layer},
    )


def require_agreement(check: ExportCheck, minimum: float, path: Path) -> None:
    """Refuse an export whose onnxruntime outputs stray from the simulation (one line, files kept to inspect)."""
    if not check.agreement >= minimum:
        raise UserError(
            f"the exported {path} does not compute what the simulation computes: onnxruntime's {check.measure} "
            f"is {check.agreement:.4f} on the calibration split, below {minimum} (the files are kept for "
            "inspection; please report this with the policy)"
        )
