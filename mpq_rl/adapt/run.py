"""``mpq-rl adapt``: adaptive-precision training into a run folder, against float32 training of the same budget.

The folder (a run folder: manifest, lock, refused if it holds someone else's files) receives

* ``policy.json``: the final per-layer precisions as an ``mpq_rl.policy/1`` policy: ``w_bits`` is the word length
  the layer ended training at (at most ``--max-bits``, default 8: AdaPT's own cap of 32 bits with its buffer of 8
  ends every layer at 12 to 32 bits, a policy that costs more than W8A8), ``a_bits`` is ``--activation-bits``
  (default 8, the W8A8 reference; training itself keeps activations in float32). The exact ``(wl, fl)`` is under
  ``"adapt"``.
* ``config.yaml``: the run's config, with those bits added to the candidates, so ``cost``, ``evaluate`` and
  ``export`` take ``--run DIR`` (they build the configured model: pass ``--weights DIR`` for the trained one).
* ``model.safetensors``: the trained weights, on their final fixed-point grids.
* ``summary.json``: held-out top-1 of adaptive and float32 training (same epochs, seed, batches), the modelled
  training speed-up, average bits over training, each layer's final format, and the policy's cost as a fraction
  of W8A8's on the configured hardware.
* ``precision.csv`` (step, layer, wl, fl, lb, res) and ``tb/``: TensorBoard scalars ``adapt/wl/<layer>``,
  ``adapt/fl/<layer>``, ``adapt/lookback/<layer>``, ``adapt/resolution/<layer>``, ``train/loss``,
  ``adapt/speedup`` and ``adapt/strategy`` (0 min, 1 mean, 2 max) per step, and two figures: word lengths over
  steps and the final policy's bits.
"""

from __future__ import annotations

import copy
import csv
import io
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save
from torch.utils.tensorboard import SummaryWriter

from mpq_rl.adapt.rule import AdaptRule, AdaptSettings, Precision
from mpq_rl.adapt.speedup import OpsCounter
from mpq_rl.adapt.training import TrainingResult, checked_loader, train
from mpq_rl.config import RunConfig
from mpq_rl.dashboards.plots import bits_figure
from mpq_rl.errors import UserError
from mpq_rl.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from mpq_rl.quantization.bits import ALLOWED_BITS, INTEGER_BITS, REFERENCE_BITS
from mpq_rl.quantization.policy import Policy, save_policy
from mpq_rl.runs.assembly import load_workload
from mpq_rl.runs.logger import TB_DIR
from mpq_rl.runs.recorder import POLICY_FILE
from mpq_rl.runs.run_folder import CONFIG_FILE, check_new_run_folder, exclusive, write_manifest
from mpq_rl.workloads.workload import Workload

SUMMARY_FORMAT = "mpq_rl.adapt/1"
SUMMARY_FILE = "summary.json"
PRECISION_FILE = "precision.csv"
WEIGHTS_FILE = "model.safetensors"
DEFAULT_LR = 1e-3
DEFAULT_BATCH_SIZE = 50
WL, FL, LOOKBACK, RESOLUTION = "adapt/wl/{}", "adapt/fl/{}", "adapt/lookback/{}", "adapt/resolution/{}"
LOSS, SPEEDUP, STRATEGY = "train/loss", "adapt/speedup", "adapt/strategy"
WORD_LENGTHS_FIGURE, POLICY_FIGURE = "adapt/word_lengths", "adapt/policy"
STRATEGY_LEVEL = {"min": 0, "mean": 1, "max": 2}


DEFAULT_MAX_BITS = 8
MAX_BITS_RANGE = (4, 8)
"""``--max-bits``: above 8 a word length has no integer container in mpq_rl's policies and costs more than W8A8."""


def policy_of(precision: dict[str, Precision], a_bits: int) -> Policy:
    """The policy at the word lengths the layers ended training at (a UserError if one has no integer width)."""
    odd = {name: p.wl for name, p in precision.items() if p.wl not in INTEGER_BITS}
    if odd:
        name, wl = next(iter(odd.items()))
        raise UserError(
            f"layer {name!r} ended adaptive training at {wl} bits, which no integer policy holds "
            f"({INTEGER_BITS[0]}-{INTEGER_BITS[-1]}): train with AdaptSettings.capped(max_bits) for a deployable policy"
        )
    return {name: (p.wl, a_bits) for name, p in precision.items()}


def reinitialize(model: torch.nn.Module, seed: int) -> None:
    """Fresh weights: every module's own ``reset_parameters``, seeded."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in model.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()


class _History:
    """Per-step formats for the CSV, the TensorBoard scalars and the word-length figure."""

    def __init__(self, writer: SummaryWriter) -> None:
        self.writer = writer
        self.rows: list[tuple[int, str, int, int, int, int]] = []

    def __call__(self, step: int, loss: float, rule: AdaptRule, ops: OpsCounter) -> None:
        self.writer.add_scalar(LOSS, loss, step)
        self.writer.add_scalar(STRATEGY, STRATEGY_LEVEL[rule.strategy], step)
        self.writer.add_scalar(SPEEDUP, ops.speedup, step)
        for name, p in rule.precision.items():
            self.rows.append((step, name, p.wl, p.fl, p.lb, p.res))
            for tag, value in ((WL, p.wl), (FL, p.fl), (LOOKBACK, p.lb), (RESOLUTION, p.res)):
                self.writer.add_scalar(tag.format(name), value, step)

    def csv_text(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["step", "layer", "wl", "fl", "lb", "res"])
        writer.writerows(self.rows)
        return out.getvalue()

    def figure(self, names: list[str]):
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt

        figure, axes = plt.subplots(figsize=(8.0, 4.0))
        for name in names:
            steps = [r[0] for r in self.rows if r[1] == name]
            axes.step(steps, [r[2] for r in self.rows if r[1] == name], where="post", label=name)
        axes.set_xlabel("training step")
        axes.set_ylabel("word length (bits)")
        axes.set_title("per-layer word length during adaptive-precision training")
        axes.legend(fontsize=7, ncol=2)
        figure.tight_layout()
        return figure


def _check_folder(folder: Path) -> None:
    check_new_run_folder(folder)
    if (folder / CONFIG_FILE).is_file():
        raise UserError(f"{folder} already holds a run: pick a new --output folder (nothing was changed)")


def run_adapt(
    config: RunConfig,
    epochs: int,
    output: Path,
    lr: float = DEFAULT_LR,
    batch_size: int = DEFAULT_BATCH_SIZE,
    fresh: bool = False,
    activation_bits: int | None = None,
    max_bits: int = DEFAULT_MAX_BITS,
    settings: AdaptSettings | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Train ``config``'s model adaptively (word lengths up to ``max_bits``, or ``settings``) and in float32 for
    ``epochs`` each; write the run folder ``output`` and return its summary (``progress``: a line per epoch on
    stderr). Everything that can refuse the run is checked before anything is written."""
    started = time.perf_counter()
    folder = Path(output)
    _check_folder(folder)
    quant = config.quantization
    a_bits = activation_bits if activation_bits is not None else REFERENCE_BITS[1] if quant.activation_bits else 32
    if a_bits not in ALLOWED_BITS:
        raise UserError(f"--activation-bits must be among {list(ALLOWED_BITS)} (16/32 = floating point), got {a_bits}")
    low, high = MAX_BITS_RANGE
    if not low <= max_bits <= high:
        raise UserError(
            f"--max-bits must be {low} to {high}, got {max_bits}: above 8 bits a layer has no integer container and "
            "the policy costs more than W8A8"
        )
    workload = load_workload(config)
    checked_loader(workload, epochs, lr, batch_size, config.seed)
    if fresh:
        reinitialize(workload.model, config.seed)
    float_model = copy.deepcopy(workload.model)
    settings = settings or AdaptSettings.capped(max_bits)
    with exclusive(folder):
        write_manifest(folder)
        writer = SummaryWriter(str(folder / TB_DIR))
        try:
            history = _History(writer)
            adaptive = train(workload, epochs, lr, config.seed, batch_size, True, settings, history, progress)
            baseline = train(
                replace(workload, model=float_model), epochs, lr, config.seed, batch_size, False, progress=progress
            )
            policy = policy_of(adaptive.precision, a_bits)
            writer.add_figure(WORD_LENGTHS_FIGURE, history.figure(workload.layers.names), 0)
            title = f"adapt: final bits ({adaptive.test_top1:.4f} top-1, speed-up {adaptive.ops.speedup:.3f}x)"
            writer.add_figure(POLICY_FIGURE, bits_figure(policy, title), 0)
        finally:
            writer.close()
        cost = policy_cost(config, workload, policy)
        summary = _summary(config, epochs, lr, batch_size, fresh, settings, adaptive, baseline, policy, started)
        summary["cost"] = cost
        _write(folder, config, workload, policy, adaptive, history, summary)
    return summary


def policy_cost(config: RunConfig, workload: Workload, policy: Policy) -> dict[str, Any]:
    """The policy's cost on the configured hardware, in its metric and as a fraction of W8A8's."""
    from mpq_rl.hardware import build_cost_table

    quant = config.quantization
    costs = build_cost_table(
        workload.layers, config.hardware, formats=quant.formats, reference_bits=quant.reference_bits
    )
    metric = config.hardware.metric
    return {"metric": metric, "hardware": config.hardware.preset, "ratio_to_w8a8": costs.ratios(policy)[metric]}


def _summary(
    config: RunConfig,
    epochs: int,
    lr: float,
    batch_size: int,
    fresh: bool,
    settings: AdaptSettings,
    adaptive: TrainingResult,
    baseline: TrainingResult,
    policy: Policy,
    started: float,
) -> dict[str, Any]:
    return {
        "format": SUMMARY_FORMAT,
        "model": config.model.source,
        "start": "fresh" if fresh else "pretrained",
        "training": {"epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": config.seed, "optimizer": "adam"},
        "test_top1": {
            "adapt": adaptive.test_top1,
            "fp32": baseline.test_top1,
            "difference": adaptive.test_top1 - baseline.test_top1,
        },
        "speedup": adaptive.ops.speedup,
        "average_bits": {"mac_weighted": adaptive.ops.average_bits, "layer_mean": adaptive.mean_word_length},
        "train_loss": {"adapt": adaptive.losses, "fp32": baseline.losses},
        "layers": {
            name: {"wl": p.wl, "fl": p.fl, "lb": p.lb, "res": p.res, "w_bits": policy[name][0]}
            for name, p in adaptive.precision.items()
        },
        "settings": asdict(settings),
        "files": {"policy": POLICY_FILE, "weights": WEIGHTS_FILE, "precision": PRECISION_FILE, "tensorboard": TB_DIR},
        "seconds": time.perf_counter() - started,
    }


def _write(
    folder: Path,
    config: RunConfig,
    workload: Workload,
    policy: Policy,
    adaptive: TrainingResult,
    history: _History,
    summary: dict[str, Any],
) -> None:
    from mpq_rl.runs.run_folder import write_config

    quant = config.quantization
    w_bits = sorted({*quant.weight_bits, *(w for w, _ in policy.values())})
    new_a_bits = {a for _, a in policy.values()} - set(quant.activation_candidates)  # weight-only stays so at 32
    a_bits = sorted({*quant.activation_bits, *new_a_bits})
    write_config(
        folder,
        config.with_overrides(
            **{"quantization.weight_bits": w_bits, "quantization.activation_bits": a_bits, "output": str(folder)}
        ),
    )
    formats = {name: {"wl": p.wl, "fl": p.fl} for name, p in adaptive.precision.items()}
    save_policy(folder / POLICY_FILE, policy, adapt=formats)
    state = {k: v.detach().contiguous() for k, v in workload.model.state_dict().items()}
    atomic_write_bytes(folder / WEIGHTS_FILE, save(state, metadata={"format": "pt"}))
    atomic_write_text(folder / PRECISION_FILE, history.csv_text())
    atomic_write_json(folder / SUMMARY_FILE, summary)
