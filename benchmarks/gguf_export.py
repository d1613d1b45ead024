"""What a GGUF export delivers in llama.cpp: its perplexity there against the simulation's, per policy.

For tinylm and SmolLM2-135M-Instruct, each policy is exported by
:func:`mpq_rl.deployment.gguf_check.export_policy_gguf` (every linear layer in a GGUF type, embeddings in F32) and
the test token windows are scored in llama.cpp (llama-cpp-python, one thread), by the project's simulator, and by
the float model. Policies: every GGUF type uniformly, llama.cpp's Q4_K_M rule on the ladder Q4_0 < Q4_1 < Q5_0 <
Q5_1 < Q8_0 (``mpq_rl/agents/fixed_mix.py``: two steps up for attn_v and ffn_down in the ``use_more_bits`` blocks),
and a mix cycling through the five types layer by layer.

Run: ``python benchmarks/gguf_export.py [--workloads tinylm smollm2] [--test-tokens N] [--policies ...]``; it
rewrites its section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import Writer, machine, machine_lines, publish, table, write_section
from mpq_rl.agents.fixed_mix import steps
from mpq_rl.config import load_config
from mpq_rl.deployment.gguf_check import PPL_TOLERANCE, export_policy_gguf
from mpq_rl.quantization import groupwise
from mpq_rl.quantization.policy import Policy
from mpq_rl.runs.assembly import load_workload

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {name: ROOT / "experiments" / "configs" / f"{name}.yaml" for name in ("tinylm", "smollm2")}
FLOAT = 32


def policies(names: list[str], blocks: int) -> dict[str, Policy]:
    """Uniform at each GGUF type, the Q4_K_M rule over the GGUF ladder, and a cyclic mix."""
    ladder = groupwise.codes_by_size(list(groupwise.GGUF_TYPES))
    result = {groupwise.block_format(code).name.upper(): {n: (code, FLOAT) for n in names} for code in ladder}
    top = len(ladder) - 1
    result["Q4_K_M rule"] = {n: (ladder[min(steps("Q4_K_M", n, blocks), top)], FLOAT) for n in names}
    result["cyclic mix"] = {n: (ladder[i % len(ladder)], FLOAT) for i, n in enumerate(names)}
    return result


def bits_per_weight(workload, policy: Policy) -> float:
    """Average stored bits per weight over the linear layers of ``policy``."""
    weights = {layer.name: layer.params for layer in workload.layers}
    total = sum(weights[n] * groupwise.block_format(w).bits_per_weight for n, (w, _) in policy.items())
    return total / sum(weights[n] for n in policy)


def measure(workload_names: list[str], test_tokens: int | None, chosen: list[str] | None) -> list[list[str]]:
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for workload_name in workload_names:
            config = load_config(CONFIGS[workload_name])
            if test_tokens is not None:
                config = config.with_overrides(**{"data.test_tokens": test_tokens})
            workload = load_workload(config)
            blocks = workload.model.lm.config.num_hidden_layers
            for policy_name, policy in policies(list(workload.layers.names), blocks).items():
                if chosen and policy_name not in chosen:
                    continue
                path = Path(folder) / f"{workload_name}.gguf"
                started = time.perf_counter()
                written, check = export_policy_gguf(workload, policy, path, require_agreement=False)
                rows.append(
                    [
                        workload_name,
                        policy_name,
                        f"{bits_per_weight(workload, policy):.3f}",
                        f"{written.size_bytes / 1e6:.1f}",
                        f"{check.runtime_ppl:.4f}",
                        f"{check.simulated_ppl:.4f}",
                        f"{check.float_ppl:.4f}",
                        f"{check.relative_difference:.3%}",
                        "met" if check.passed else "**missed**",
                        f"{time.perf_counter() - started:.0f}",
                    ]
                )
                print(" | ".join(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None, write: Writer = write_section) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", choices=sorted(CONFIGS), default=sorted(CONFIGS, reverse=True))
    parser.add_argument("--test-tokens", type=int, help="test tokens per workload (default: the config's)")
    parser.add_argument("--policies", nargs="+", help="only these policies (e.g. Q8_0 Q4_0 'Q4_K_M rule')")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    before = machine()
    rows = measure(args.workloads, args.test_tokens, args.policies)
    header = ["workload", "policy", "bpw (linear)", "file MB", "llama.cpp ppl", "simulated ppl", "float ppl"]
    lines = [
        "## GGUF export in llama.cpp (benchmarks/gguf_export.py)",
        "",
        *machine_lines(before, machine()["load_average"]),
        f"- llama.cpp through llama-cpp-python, one thread; tolerance: relative perplexity difference <= "
        f"{PPL_TOLERANCE:.0%}; embeddings and norms in F32; seconds include export and all three scorings",
        "",
        *table([*header, "relative difference", "tolerance", "s"], rows),
    ]
    publish("gguf_export", lines, write)


if __name__ == "__main__":
    main()
