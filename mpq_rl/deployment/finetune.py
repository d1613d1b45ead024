"""Held-out evaluation of a policy, optionally after quantization-aware finetuning (LSQ) on the train split.

:func:`finetune` is what ``mpq-rl evaluate [--finetune-epochs N]`` runs (a search does not finetune): it scores
the policy on the test split with the calibrated simulator (before), attaches LSQ quantizers initialized from that
simulator's ranges (:mod:`mpq_rl.quantization.qat`), trains weights and step sizes on the train split, and scores
again (after). The model is finetuned in place: detach any evaluator's simulator (``Evaluator.close()``) first.

BatchNorm: the model trains with every BatchNorm layer in eval mode. Normalization uses the frozen running
statistics, which are never updated; the BN scale and shift still learn. Simulator, finetuning and the exported
graph all apply BN in floating point after the quantized layer, so training matches what is deployed, and the
statistics are not re-estimated from a handful of small batches of a network whose quantization noise they would
then bake in. (A deployment backend folds BN into the per-channel weight scale, exactly: the integers stay.)

Outputs (:meth:`FinetuneResult.save`): ``model.safetensors`` (the finetuned float state dict, loadable with
``model.load_state_dict``), ``lsq_scales.safetensors`` (learned step sizes, see
:mod:`mpq_rl.deployment.finetuned_weights`)
and ``evaluation.json``.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from mpq_rl.deployment.finetuned_weights import SCALES_FILE, WEIGHTS_FILE, save_finetuned
from mpq_rl.deployment.train_split import train_loader
from mpq_rl.errors import UserError
from mpq_rl.io import atomic_write_json
from mpq_rl.quantization.policy import BitPair, Policy, policy_to_json
from mpq_rl.quantization.qat import LayerScales, LsqAttachment, calibrated_scales
from mpq_rl.search.evaluator import Metrics, calibrated_simulator
from mpq_rl.search.metrics import score
from mpq_rl.text_table import render_table
from mpq_rl.workloads.data import to_device
from mpq_rl.workloads.model_io import call_model, model_outputs, output_tensor
from mpq_rl.workloads.workload import Workload

EVALUATION_FORMAT = "mpq_rl.evaluation/1"
EVALUATION_FILE = "evaluation.json"
DEFAULT_LR = 1e-3
DEFAULT_BATCH_SIZE = 32
PROGRESS_SECONDS = 10.0
"""Longest quiet spell of a finetuning run with progress on."""


@dataclass
class FinetuneResult:
    """Held-out metrics of a policy before and after finetuning, with the finetuned weights and learned scales.

    With ``epochs == 0`` nothing is trained: ``after`` is None and ``state_dict``/``scales`` are empty.
    """

    policy: Policy
    epochs: int
    lr: float
    seed: int
    fp32: Metrics
    before: Metrics
    after: Metrics | None = None
    losses: list[float] = field(default_factory=list)
    state_dict: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    scales: dict[str, LayerScales] = field(default_factory=dict, repr=False)

    def to_json(self) -> dict[str, Any]:
        files = {"weights": WEIGHTS_FILE, "scales": SCALES_FILE} if self.epochs else {}
        return {
            "format": EVALUATION_FORMAT,
            "policy": policy_to_json(self.policy)["layers"],
            "finetune": {"epochs": self.epochs, "lr": self.lr, "seed": self.seed, "train_loss": self.losses},
            "test": {"fp32": self.fp32, "before": self.before, "after": self.after},
            "files": files,
        }

    def save(self, folder: str | Path) -> None:
        """Write ``evaluation.json`` and, after finetuning, the weights and scales into ``folder``."""
        folder = Path(folder)
        if self.epochs:
            save_finetuned(folder, self.state_dict, self.scales)
        atomic_write_json(folder / EVALUATION_FILE, self.to_json())

    def table(self) -> str:
        """The held-out metrics as a small table: FP32, the simulated policy, and the policy after finetuning."""
        keys = [k for k in ("top1", "agreement", "kl", "cosine") if k in self.fp32]
        rows = [("test split", *keys)]
        named = [("fp32", self.fp32), ("policy (simulated)", self.before)]
        if self.after is not None:
            named.append((f"policy after {self.epochs} epochs LSQ", self.after))
        for label, metrics in named:
            rows.append((label, *(f"{metrics[k]:.4f}" for k in keys)))
        return render_table(rows, right=tuple(range(1, len(keys) + 1)))


@dataclass
class _Baseline:
    reference: torch.Tensor
    fp32: Metrics
    before: Metrics
    scales: dict[str, LayerScales]


def _baseline(workload: Workload, policy: Mapping[str, BitPair]) -> _Baseline:
    """FP32 outputs and metrics on the test split, the simulated policy's metrics, and its calibrated quantizers."""
    if workload.test is None:
        raise UserError("held-out evaluation needs a test split: set data.name or data.factory")
    simulator = calibrated_simulator(workload)
    try:
        reference = model_outputs(workload.model, workload.test)
        targets = workload.test.targets()
        with simulator.applied(policy):
            quantized = model_outputs(workload.model, workload.test)
        scales = calibrated_scales(simulator, policy)
    finally:
        simulator.detach()
    return _Baseline(reference, score(reference, reference, targets), score(quantized, reference, targets), scales)


def finetune(
    workload: Workload,
    policy: Mapping[str, BitPair],
    epochs: int,
    lr: float = DEFAULT_LR,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = False,
) -> FinetuneResult:
    """Quantization-aware finetuning of ``workload.model`` (in place) under ``policy``, scored on the test split.

    ``policy`` may name only the searched layers (the fixed ones are added). Weights and LSQ step sizes train
    with Adam and a cosine schedule for ``epochs`` passes over the shuffled train split (cross-entropy on its
    labels), seeded by ``seed``; BatchNorm statistics stay frozen (see the module docstring). With
    ``epochs == 0`` this only scores the policy (FP32 and simulated) on the test split. With ``progress``, a line
    on stderr after each epoch and every :data:`PROGRESS_SECONDS` within one.
    """
    if epochs < 0:
        raise UserError(f"finetune epochs must be 0 or more, got {epochs}")
    if lr <= 0:
        raise UserError(f"finetune learning rate must be positive, got {lr}")
    policy = workload.full_policy(dict(policy))
    baseline = _baseline(workload, policy)
    result = FinetuneResult(policy, epochs, lr, seed, baseline.fp32, baseline.before)
    if epochs == 0:
        return result
    loader = train_loader(workload, batch_size, seed)
    model = workload.model
    attachment = LsqAttachment(model, baseline.scales)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            result.losses = _train(model, attachment, loader, epochs, lr, progress)
        outputs = model_outputs(model, workload.test)
        result.after = score(outputs, baseline.reference, workload.test.targets())
        result.scales = attachment.scales()
    finally:
        attachment.detach()
        model.eval()
    result.state_dict = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return result


def freeze_batchnorm(model: nn.Module) -> list[nn.Module]:
    """Put every BatchNorm layer of ``model`` in eval mode (running statistics used, never updated)."""
    frozen = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for module in frozen:
        module.eval()
    return frozen


def _train(
    model: nn.Module, attachment: LsqAttachment, loader: DataLoader, epochs: int, lr: float, progress: bool
) -> list[float]:
    """Train weights and step sizes; return the mean loss of each epoch."""
    device = next(model.parameters()).device
    step_sizes = attachment.step_sizes()
    learned = {id(p) for p in step_sizes}  # parametrize makes weight quantizers submodules of their layers
    weights = [p for p in model.parameters() if p.requires_grad and id(p) not in learned]
    optimizer = torch.optim.Adam([{"params": weights}, {"params": step_sizes}], lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs * len(loader)))
    model.train()
    freeze_batchnorm(model)
    losses = []
    started = last_line = time.monotonic()
    for epoch in range(1, epochs + 1):
        total, count = 0.0, 0
        for batch, (inputs, targets) in enumerate(loader, 1):
            inputs, targets = to_device(inputs, device), targets.to(device)
            logits = output_tensor(call_model(model, inputs))
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * len(targets)
            count += len(targets)
            if progress and time.monotonic() - last_line >= PROGRESS_SECONDS and batch < len(loader):
                last_line = time.monotonic()
                _line(f"epoch {epoch}/{epochs}, batch {batch}/{len(loader)}, loss {total / count:.4f}", started)
        if not math.isfinite(total):
            raise UserError("finetuning diverged (the loss is not finite): lower the learning rate")
        losses.append(total / count)
        if progress:
            last_line = time.monotonic()
            _line(f"epoch {epoch}/{epochs} done, mean loss {losses[-1]:.4f}", started)
    model.eval()
    return losses


def _line(text: str, started: float) -> None:
    print(f"finetune: {text}, {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
