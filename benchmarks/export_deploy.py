"""What an ONNX export delivers in onnxruntime: speed against FP32, the kernels that ran, agreement, size.

For each workload and policy, ``mpq_rl.deployment.export.export_onnx`` writes the quantized graph (BatchNorm folded,
sub-8-bit inputs in 8-bit containers) and measures it (:mod:`mpq_rl.deployment.export_check`): onnxruntime's
top-1 agreement (classifiers) or cosine (MiniLM embeddings) with the simulation on the calibration split, the file
size next to the FP32 export, and the median latency of one calibration batch next to the FP32 graph, the two
timed alternately at the same thread count, at 1 and 2 threads. The kernel column says which onnxruntime kernel
ran each kind of layer (read from onnxruntime's optimized graph).

Workloads: the digits CNN (cached, trained); ResNet-18 at 64x64 with random weights and random BatchNorm statistics
(10 classes, random images; agreement is with its own simulation); MiniLM (cached). Policies: W8A8, a low-bit
mixed policy of the kind a tight-budget search returns (W3A4 inside, first and last layer W8A8), and for MiniLM a
cycle of W4A8 / W8A8 / W6A6 / W3A5.

Run: ``python benchmarks/export_deploy.py [--threads 1 2] [--workloads digits resnet18 minilm]``; it rewrites its
section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import Writer, machine, machine_lines, publish, table, write_section
from mpq_rl.config import RunConfig, load_config
from mpq_rl.deployment.export import export_policy
from mpq_rl.deployment.export_check import ExportCheck
from mpq_rl.deployment.kernels import kernel_summary
from mpq_rl.quantization.policy import Policy
from mpq_rl.runs.assembly import assemble_workload, load_workload
from mpq_rl.workloads.imagenet_models import resnet18
from mpq_rl.workloads.workload import Workload

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {name: ROOT / "experiments" / "configs" / f"{name}.yaml" for name in ("digits", "minilm")}
WORKLOADS = ("digits", "resnet18", "minilm")
RESNET_PIXELS = 64
RESNET_SAMPLES = 64


def resnet_workload() -> Workload:
    """ResNet-18 (10 classes) at 64x64, seeded random weights and BatchNorm statistics, random images."""
    torch.manual_seed(0)
    model = resnet18(num_classes=10).eval()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            with torch.no_grad():
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    images = torch.rand(RESNET_SAMPLES, 3, RESNET_PIXELS, RESNET_PIXELS)
    with torch.no_grad():
        split = TensorDataset(images, model(images).argmax(dim=1))
    config = RunConfig.model_validate(
        {"data": {"batch_size": 16, "calibration_samples": RESNET_SAMPLES}, "proxy": {"metric": "top1"}}
    )
    return assemble_workload(config, model, {"calibration": split, "test": split})


def policies(workload_name: str, names: list[str]) -> dict[str, Policy]:
    """W8A8 and one mixed policy per workload (see the module docstring)."""
    if workload_name == "minilm":
        cycle = [(4, 8), (8, 8), (6, 6), (3, 5)]
        mixed = {name: cycle[i % len(cycle)] for i, name in enumerate(names)}
    else:
        mixed = {name: (8, 8) if name in (names[0], names[-1]) else (3, 4) for name in names}
    return {"W8A8": dict.fromkeys(names, (8, 8)), "mixed": mixed}


def measure(workload_names: list[str], thread_counts: list[int]) -> list[list[str]]:
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for workload_name in workload_names:
            if workload_name == "resnet18":
                workload = resnet_workload()
            else:
                workload = load_workload(load_config(CONFIGS[workload_name]))
            for policy_name, policy in policies(workload_name, workload.layers.names).items():
                for threads in thread_counts:
                    torch.set_num_threads(threads)
                    path = Path(folder) / f"{workload_name}-{policy_name}.onnx"
                    sidecar = export_policy(workload, policy, path, min_agreement=0.0, threads=threads)
                    check = ExportCheck(**sidecar["check"])
                    rows.append(
                        [
                            workload_name,
                            policy_name,
                            str(threads),
                            f"{check.measure} {check.agreement:.4f}",
                            f"{check.size_bytes / 1e6:.2f} / {check.fp32_size_bytes / 1e6:.2f}",
                            f"{check.latency_s * 1e3:.1f} / {check.fp32_latency_s * 1e3:.1f}",
                            f"{check.speedup:.2f}x",
                            "; ".join(kernel_summary(check.layer_kernels, check.layer_kinds)),
                        ]
                    )
                    print(" | ".join(rows[-1]), flush=True)
                    if check.speedup <= 1.0:
                        print(f"  not faster: {check.why_not_faster()}", flush=True)
    return rows


def main(argv: list[str] | None = None, write: Writer = write_section) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="onnxruntime (and torch) threads")
    parser.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    args = parser.parse_args(argv)
    before = machine()
    rows = measure(args.workloads, args.threads)
    header = ["workload", "policy", "threads", "onnxruntime vs simulation", "MB (quantized / FP32)"]
    lines = [
        "## ONNX export in onnxruntime (benchmarks/export_deploy.py)",
        "",
        *machine_lines(before, machine()["load_average"]),
        "- one calibration batch per run (digits 256 images, ResNet-18 16 images of 64x64, MiniLM 64 sentences); "
        "quantized and FP32 graphs timed alternately, medians",
        "",
        *table([*header, "ms per batch (q / FP32)", "speed-up", "kernels per layer kind"], rows),
    ]
    publish("export_deploy", lines, write)


if __name__ == "__main__":
    main()
