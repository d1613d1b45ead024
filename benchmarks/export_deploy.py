"""What an ONNX export delivers in onnxruntime: agreement with the simulation, file size and latency against FP32.

For each workload and policy, ``mpq_rl.deployment.export.export_policy`` writes the quantized graph and measures it
(:mod:`mpq_rl.deployment.export_check`): onnxruntime's top-1 agreement (digits) or cosine (MiniLM embeddings) with the
simulation on the calibration split, the file size next to the FP32 export, and the median latency of one
calibration batch next to the FP32 graph, the two timed alternately at the same thread count. The policies show
where onnxruntime has low-precision kernels on this CPU: W8A8 (QDQ fusion into integer kernels), W4 weights with
float inputs (``MatMulNBits``), and a mixed policy.

Run: ``python benchmarks/export_deploy.py [--threads N] [--workloads digits minilm]``; it rewrites its section of
``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import Writer, machine, machine_lines, publish, table, write_section
from mpq_rl.config import load_config
from mpq_rl.deployment.export import export_policy
from mpq_rl.deployment.export_check import ExportCheck
from mpq_rl.quantization.policy import Policy
from mpq_rl.runs.assembly import load_workload

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {name: ROOT / "experiments" / "configs" / f"{name}.yaml" for name in ("digits", "minilm")}


def policies(names: list[str]) -> dict[str, Policy]:
    """W8A8, W4 weight-only (float inputs), and a mixed policy cycling W4A8 / W8A8 / W6A6 / W3A5."""
    mixed = [(4, 8), (8, 8), (6, 6), (3, 5)]
    return {
        "W8A8": {name: (8, 8) for name in names},
        "W4A32": {name: (4, 32) for name in names},
        "mixed": {name: mixed[i % len(mixed)] for i, name in enumerate(names)},
    }


def measure(workload_names: list[str], threads: int) -> list[list[str]]:
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for workload_name in workload_names:
            workload = load_workload(load_config(CONFIGS[workload_name]))
            for policy_name, policy in policies(workload.layers.names).items():
                path = Path(folder) / f"{workload_name}-{policy_name}.onnx"
                sidecar = export_policy(workload, policy, path, min_agreement=0.0, threads=threads)
                check = ExportCheck(**sidecar["check"])
                kernels = ", ".join(f"{op} x{n}" for op, n in sorted(check.integer_kernels.items())) or "none"
                rows.append(
                    [
                        workload_name,
                        policy_name,
                        f"{check.measure} {check.agreement:.4f}",
                        f"{check.size_bytes / 1e6:.2f} / {check.fp32_size_bytes / 1e6:.2f}",
                        f"{check.latency_s * 1e3:.1f} / {check.fp32_latency_s * 1e3:.1f}",
                        f"{check.fp32_latency_s / check.latency_s:.2f}x",
                        kernels,
                    ]
                )
                print(" | ".join(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None, write: Writer = write_section) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (and torch threads)")
    parser.add_argument("--workloads", nargs="+", choices=sorted(CONFIGS), default=sorted(CONFIGS))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    before = machine()
    rows = measure(args.workloads, args.threads)
    header = ["workload", "policy", "onnxruntime vs simulation", "MB (quantized / FP32)", "ms per batch (q / FP32)"]
    lines = [
        "## ONNX export in onnxruntime (benchmarks/export_deploy.py)",
        "",
        *machine_lines(before, machine()["load_average"]),
        f"- onnxruntime threads: {args.threads}; one calibration batch (digits 256 images, MiniLM 64 sentences)",
        "",
        *table([*header, "speed-up", "low-precision kernels"], rows),
    ]
    publish("export_deploy", lines, write)


if __name__ == "__main__":
    main()
