"""Training with per-layer adaptive fixed-point weights (AdaPT), and its float32 twin for comparison.

:func:`train` runs Adam with a cosine schedule over the shuffled train split (cross-entropy on its labels). With
``adaptive=True`` every quantizable layer's weight is fake-quantized to its current ``(wl, fl)`` in the forward
pass (straight-through gradient to a float32 master copy, as AdaPT keeps one); each step its gradient is rounded
stochastically to ``(wl, fl)`` before the update and handed to the :class:`~mpq_rl.adapt.rule.AdaptRule`, which
changes the layer's format when its window is full. With ``adaptive=False`` the same loop trains in float32: same
initial weights, same batches, same seed. Biases, BatchNorm and activations stay in float32 (AdaPT's code also
quantizes each layer's input and output at its ``(wl, fl)``; we do not, see docs/adapt.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.data import DataLoader

from mpq_rl.adapt.fixed_point import fixed_point, stochastic_round
from mpq_rl.adapt.rule import AdaptRule, AdaptSettings, Precision
from mpq_rl.adapt.speedup import OpsCounter
from mpq_rl.deployment.train_split import train_loader
from mpq_rl.errors import UserError
from mpq_rl.search.metrics import top1
from mpq_rl.workloads.data import to_device
from mpq_rl.workloads.model_io import call_model, model_outputs, output_tensor
from mpq_rl.workloads.workload import Workload

StepCallback = Callable[[int, float, AdaptRule, OpsCounter], None]
"""Called after every adaptive step with the step number (from 1), the batch loss, the rule and the ops so far."""


class FixedPointWeight(nn.Module):
    """A parametrization: the layer's weight as the forward pass sees it, on the current ``(wl, fl)`` grid."""

    def __init__(self, wl: int, fl: int) -> None:
        super().__init__()
        self.wl, self.fl = wl, fl

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return fixed_point(self.wl, self.fl)(weight)


@dataclass
class TrainingResult:
    """What a training run produced: per-epoch mean losses, held-out top-1 and, when adaptive, the final formats
    and the modelled speed-up."""

    losses: list[float]
    test_top1: float
    precision: dict[str, Precision] = field(default_factory=dict)
    ops: OpsCounter | None = None
    mean_word_length: float = 32.0
    """The unweighted mean of the layers' word lengths over the steps."""


def train(
    workload: Workload,
    epochs: int,
    lr: float,
    seed: int,
    batch_size: int,
    adaptive: bool,
    settings: AdaptSettings | None = None,
    on_step: StepCallback | None = None,
) -> TrainingResult:
    """Train ``workload.model`` in place on its train split for ``epochs`` and score it on the test split.

    The trained model keeps its final fixed-point weights (the parametrizations are removed, leaving the
    quantized values), so its state dict is what the forward pass used.
    """
    loader = checked_loader(workload, epochs, lr, batch_size, seed)
    model = workload.model
    names = workload.layers.names
    modules = {name: model.get_submodule(name) for name in names}
    rule = AdaptRule(names, settings) if adaptive else None
    if rule is not None:
        for name, module in modules.items():
            p = rule.precision[name]
            parametrize.register_parametrization(module, "weight", FixedPointWeight(p.wl, p.fl))
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            result = _loop(model, modules, loader, epochs, lr, rule, workload, seed, on_step)
        outputs = model_outputs(model, workload.test)
        result.test_top1 = top1(outputs, workload.test.targets())
    finally:
        for module in modules.values():
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        model.eval()
    return result


def checked_loader(workload: Workload, epochs: int, lr: float, batch_size: int, seed: int) -> DataLoader:
    """The train split's loader, once the settings and the splits are known to make a training run (user errors
    otherwise)."""
    if epochs < 1:
        raise UserError(f"--epochs must be at least 1, got {epochs}")
    if lr <= 0:
        raise UserError(f"--lr must be positive, got {lr}")
    if workload.test is None or workload.test.targets() is None:
        raise UserError(
            "adaptive-precision training reports held-out top-1: give a labelled test split (a classifier's data)"
        )
    return train_loader(workload, batch_size, seed)


def _loop(
    model: nn.Module,
    modules: dict[str, nn.Module],
    loader: DataLoader,
    epochs: int,
    lr: float,
    rule: AdaptRule | None,
    workload: Workload,
    seed: int,
    on_step: StepCallback | None,
) -> TrainingResult:
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs * len(loader)))
    rounding = torch.Generator().manual_seed(seed)
    macs = {layer.name: layer.macs for layer in workload.layers}
    ops = OpsCounter() if rule is not None else None
    word_length_sum, layer_steps = 0.0, 0
    model.train()
    losses, step = [], 0
    for _ in range(epochs):
        total, count = 0.0, 0
        for inputs, targets in loader:
            inputs, targets = to_device(inputs, workload.device), targets.to(workload.device)
            logits = output_tensor(call_model(model, inputs))
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
            optimizer.zero_grad()
            loss.backward()
            step += 1
            if rule is not None:
                rule.observe_loss(float(loss.detach()))
                word_lengths = {name: rule.precision[name].wl for name in modules}
                ops.add_step(macs, word_lengths, len(targets))
                word_length_sum += sum(word_lengths.values())
                layer_steps += len(word_lengths)
                for name, module in modules.items():
                    master = module.parametrizations.weight.original
                    p = rule.precision[name]
                    master.grad = stochastic_round(master.grad, p.wl, p.fl, rounding)
                    rule.observe_gradient(name, master.grad)
            optimizer.step()
            schedule.step()
            if rule is not None:
                for name, module in modules.items():
                    if rule.ready(name):
                        p = rule.adapt(name, module.parametrizations.weight.original)
                        module.parametrizations.weight[0].wl, module.parametrizations.weight[0].fl = p.wl, p.fl
                if on_step is not None:
                    on_step(step, float(loss.detach()), rule, ops)
            total += float(loss.detach()) * len(targets)
            count += len(targets)
        if not math.isfinite(total):
            raise UserError("training diverged (the loss is not finite): lower --lr")
        losses.append(total / count)
    model.eval()
    return TrainingResult(
        losses=losses,
        test_top1=math.nan,
        precision=dict(rule.precision) if rule is not None else {},
        ops=ops,
        mean_word_length=word_length_sum / layer_steps if layer_steps else 32.0,
    )
