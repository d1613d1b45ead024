"""Episode cost: one environment episode against one FP32 forward pass and against naive copy-and-quantize.

Targets (the environment issue): in steady state, an episode (reset, every step, budget projection, evaluation
of a new policy whose quantized tensors are cached, costing, reward) costs at most 1.15x one FP32 forward pass
over the same calibration data, and is at least 3x faster than the naive approach.

Each workload is measured with 1 and with 2 torch threads. Ratios to FP32 are the median over rounds of the
ratio within a round (``episode[r] / fp32[r]``), which cancels the drift in the machine's speed that a ratio of
two medians carries; the ratio of the medians is printed beside it.

Variants, timed interleaved in each round:

* ``fp32``: :func:`mpq_rl.workloads.model_io.model_outputs` over the calibration batches, the simulator restored
  (hooks in place, quantizing nothing).
* ``quantized``: the evaluation's core alone, the round's policy applied to the simulator and one forward pass
  over the calibration data: the least any episode can cost, so ``episode / quantized`` is the environment's
  own overhead.
* ``episode``: ``reset`` and every ``step`` of :class:`~mpq_rl.envs.BitWidthEnv` with seeded random actions. The
  round's policy was played once before timing, so the simulator holds its quantized tensors; the evaluation
  cache is emptied and the simulator restored before the timed episode, so the evaluation itself runs in full.
* ``naive``: ``copy.deepcopy`` of the FP32 model, a fresh :class:`~mpq_rl.quantization.simulator.QuantSimulator` on the
copy
  (every quantized weight and activation range computed from scratch, including the FP32 calibration pass that
  activation ranges need), the same policy applied, the calibration data evaluated and scored. Its time is also
  split into those parts, so the speed-up without the calibration pass can be read off too.

``cold``, reported separately: the first episode on a freshly built evaluator, when every quantized tensor of
the policy is computed on the spot (the evaluator's own construction, calibration included, is not counted).

Run: ``python benchmarks/episode_cost.py [--workloads digits minilm] [--repeats N]``; it rewrites its section
of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import (
    Writer,
    interleaved,
    machine,
    machine_lines,
    median_ms,
    paired_ratio,
    publish,
    table,
    verdict,
    write_section,
)
from mpq_rl.config import RunConfig, parse_config
from mpq_rl.envs import BitWidthEnv
from mpq_rl.hardware import build_cost_table
from mpq_rl.quantization.policy import Policy
from mpq_rl.quantization.simulator import QuantSimulator
from mpq_rl.runs.assembly import build_problem, load_workload
from mpq_rl.search.evaluator import EvaluationCache, Evaluator
from mpq_rl.search.metrics import score
from mpq_rl.workloads.model_io import model_outputs
from mpq_rl.workloads.workload import Workload

NAME = "episode_cost"
THREADS = (1, 2)
"""Torch intra-op threads, measured in turn: 1 is what each process of a parallel search or comparison uses."""
EPISODE_VS_FP32_TARGET = 1.15
"""An episode may cost at most this many FP32 forward passes."""
NON_CONTIGUOUS_TARGET = 1.3
"""On the model whose layers see non-contiguous inputs, an episode may cost this many FP32 forward passes."""
FIRST_EPISODES = 100
FIRST_VS_STEADY_TARGET = 1.2
"""The first episodes on a fresh problem may cost at most this much more than the steady state."""


def plain_target(workload: str) -> float:
    """The episode / hook-free FP32 target of a workload (issue 16)."""
    return NON_CONTIGUOUS_TARGET if workload == "transposed" else EPISODE_VS_FP32_TARGET


NAIVE_SPEEDUP_TARGET = 3.0
"""An episode must be at least this many times faster than naive copy-and-quantize."""


@dataclass(frozen=True)
class Setting:
    """One workload to measure, and how many times."""

    name: str
    sections: dict[str, Any]
    repeats: int
    naive_repeats: int
    cold_repeats: int

    def config(self) -> RunConfig:
        return parse_config(self.sections)


class TransposedMLP(nn.Module):
    """Digits images read as 8 rows of 8 pixels, mixed along rows and along columns in turn (``Linear`` layers
    across a transposed tensor, as attention and MLP-mixer blocks do): every layer after the first sees a
    non-contiguous input."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.rows = nn.Linear(8, width)
        self.columns = nn.Linear(8, width)
        self.mix = nn.Linear(width, width)
        self.head = nn.Linear(width * width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.rows(x.squeeze(1)))  # [B, 8, width]
        x = torch.relu(self.columns(x.transpose(1, 2)))  # [B, width, width] from a transposed input
        x = torch.relu(self.mix(x.transpose(1, 2)))
        return self.head(x.flatten(1))


def transposed_mlp() -> nn.Module:
    """The :class:`TransposedMLP` with seeded weights (untrained: scored by fidelity to its FP32 outputs)."""
    torch.manual_seed(0)
    return TransposedMLP()


SETTINGS = {
    "digits": Setting("digits", {}, repeats=150, naive_repeats=15, cold_repeats=5),
    "transposed": Setting(
        "transposed",
        {
            "model": {"name": None, "factory": "benchmarks.episode_cost:transposed_mlp"},
            "proxy": {"metric": "fidelity"},
        },
        repeats=150,
        naive_repeats=15,
        cold_repeats=5,
    ),
    "minilm": Setting(
        "minilm",
        {
            "model": {"name": "minilm"},
            "data": {"name": "minilm_sentences", "kwargs": {"calibration_size": 64}},
            "proxy": {"metric": "fidelity", "fidelity": "cosine"},
        },
        repeats=7,
        naive_repeats=3,
        cold_repeats=1,
    ),
}


def random_actions(env: BitWidthEnv, rng: np.random.Generator) -> list[np.ndarray]:
    return [rng.uniform(-1.0, 1.0, env.action_space.shape).astype(np.float32) for _ in range(env.n_steps)]


def play(env: BitWidthEnv, actions: Sequence[np.ndarray]) -> dict[str, Any]:
    """One episode; the final info."""
    env.reset()
    info: dict[str, Any] = {}
    for action in actions:
        _, _, done, _, info = env.step(action)
    if not done:
        raise RuntimeError("the episode did not end after one action per searched layer")
    return info


def naive_evaluate(
    fp32_model: torch.nn.Module,
    workload: Workload,
    policy: Policy,
    reference: torch.Tensor,
    parts: dict[str, list[float]],
) -> dict[str, float]:
    """The metrics of ``policy`` with nothing reused but the FP32 outputs ``reference``: copy the model,
    calibrate, quantize, evaluate and score; the seconds of each part are appended to ``parts``."""
    ranges = workload.ranges
    start = time.perf_counter()
    model = copy.deepcopy(fp32_model)
    copied = time.perf_counter()
    simulator = QuantSimulator(
        model,
        workload.layers.names,
        weight_range=ranges.weight_range,
        activation_range=ranges.activation_range,
        percentile=ranges.percentile,
        seed=ranges.seed,
    )
    simulator.calibrate((inputs for inputs, _ in workload.calibration), workload.calibration.num_samples)
    calibrated = time.perf_counter()
    simulator.apply(policy)
    quantized = time.perf_counter()
    metrics = score(model_outputs(model, workload.calibration), reference, workload.calibration.targets())
    done = time.perf_counter()
    for key, seconds in (
        ("copy", copied - start),
        ("calibrate", calibrated - copied),
        ("quantize", quantized - calibrated),
        ("evaluate", done - quantized),
    ):
        parts.setdefault(key, []).append(seconds)
    return metrics


def build_env(config: RunConfig, workload: Workload, costs) -> BitWidthEnv:
    return BitWidthEnv(problem=build_problem(config, workload=workload, costs=costs, evaluator=Evaluator(workload)))


def measure(setting: Setting, repeats: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Time the variants on one workload; medians in ms, ratios, and whether the targets are met."""
    repeats = repeats or setting.repeats
    naive_repeats = min(setting.naive_repeats, repeats)
    cold_repeats = min(setting.cold_repeats, repeats)
    config = setting.config()
    workload = load_workload(config)
    fp32_model = copy.deepcopy(workload.model)
    costs = build_cost_table(workload.layers, config.hardware)
    rng = np.random.default_rng(seed)

    cold = []
    for _ in range(cold_repeats):
        env = build_env(config, workload, costs)
        actions = random_actions(env, rng)
        start = time.perf_counter()
        play(env, actions)
        cold.append(time.perf_counter() - start)
        env.problem.evaluator.close()

    env = build_env(config, workload, costs)
    evaluator = env.problem.evaluator
    rounds = [random_actions(env, rng) for _ in range(repeats)]
    first_plays = []
    infos = []
    for actions in rounds:
        started = time.perf_counter()
        infos.append(play(env, actions))
        first_plays.append(time.perf_counter() - started)
    policies = [{name: (w, a) for name, (w, a) in info["policy"].items()} for info in infos]
    episode_metrics: list[dict[str, float]] = []
    naive_metrics: list[dict[str, float]] = []
    parts: dict[str, list[float]] = {}
    new_policies = 0
    quantized_rounds = 0

    def fp32() -> None:
        model_outputs(workload.model, evaluator.calibration)

    def plain_fp32() -> None:
        model_outputs(fp32_model, evaluator.calibration)

    def quantized() -> None:
        nonlocal quantized_rounds
        evaluator.simulator.apply(policies[quantized_rounds])
        model_outputs(workload.model, evaluator.calibration)
        quantized_rounds += 1

    def episode() -> None:
        i = len(episode_metrics)
        misses = evaluator.cache.misses
        episode_metrics.append(play(env, rounds[i])["metrics"])
        nonlocal new_policies
        new_policies += evaluator.cache.misses > misses

    def naive() -> None:
        naive_metrics.append(
            naive_evaluate(fp32_model, workload, policies[len(naive_metrics)], evaluator.reference, parts)
        )

    def fresh_evaluation() -> None:
        evaluator.cache = EvaluationCache()
        evaluator.simulator.restore()

    times = interleaved(
        {"fp32": fp32, "plain_fp32": plain_fp32, "quantized": quantized, "episode": episode, "naive": naive},
        repeats,
        counts={"naive": naive_repeats},
        before={
            "fp32": evaluator.simulator.restore,
            "quantized": evaluator.simulator.restore,
            "episode": fresh_evaluation,
        },
    )
    env.problem.evaluator.close()

    fp32_ms, quantized_ms, episode_ms, naive_ms = (
        median_ms(times[k]) for k in ("fp32", "quantized", "episode", "naive")
    )
    episode_vs_fp32 = paired_ratio(times["episode"], times["fp32"])
    episode_vs_plain = paired_ratio(times["episode"], times["plain_fp32"])
    first = first_plays[:FIRST_EPISODES]
    first_vs_steady = statistics.mean(first) / statistics.median(times["episode"])
    cold_ms = median_ms(cold) if cold else float("nan")
    naive_no_calibration_ms = naive_ms - median_ms(parts["calibrate"])
    return {
        "workload": setting.name,
        "threads": torch.get_num_threads(),
        "layers": len(workload.layers.names),
        "searched": len(workload.searched),
        "calibration_samples": workload.calibration.num_samples,
        "repeats": repeats,
        "naive_repeats": naive_repeats,
        "cold_repeats": cold_repeats,
        "fp32_ms": fp32_ms,
        "quantized_forward_ms": quantized_ms,
        "episode_ms": episode_ms,
        "naive_ms": naive_ms,
        "cold_episode_ms": cold_ms,
        "plain_fp32_ms": median_ms(times["plain_fp32"]),
        "episode_vs_plain_fp32": episode_vs_plain,
        "first_episodes": len(first),
        "first_episodes_ms": 1e3 * statistics.mean(first),
        "first_vs_steady": first_vs_steady,
        "first_vs_steady_met": first_vs_steady <= FIRST_VS_STEADY_TARGET,
        "episode_vs_plain_fp32_met": episode_vs_plain <= plain_target(setting.name),
        "naive_parts_ms": {k: median_ms(v) for k, v in parts.items()},
        "episode_vs_fp32": episode_vs_fp32,
        "episode_vs_fp32_of_medians": episode_ms / fp32_ms,
        "quantized_forward_vs_fp32": paired_ratio(times["quantized"], times["fp32"]),
        "episode_vs_quantized_forward": paired_ratio(times["episode"], times["quantized"]),
        "naive_vs_episode": naive_ms / episode_ms,
        "naive_without_calibration_vs_episode": naive_no_calibration_ms / episode_ms,
        "cold_vs_fp32": cold_ms / fp32_ms,
        "new_policies": f"{new_policies} of {repeats}",
        "naive_matches_env": all(_same(a, b) for a, b in zip(naive_metrics, episode_metrics, strict=False)),
        "episode_vs_fp32_met": episode_vs_fp32 <= EPISODE_VS_FP32_TARGET,
        "naive_speedup_met": naive_ms / episode_ms >= NAIVE_SPEEDUP_TARGET,
    }


def _same(a: dict[str, float], b: dict[str, float]) -> bool:
    return a.keys() == b.keys() and all(abs(a[k] - b[k]) <= 1e-6 for k in a)


def run(
    workloads: Sequence[str] = tuple(SETTINGS), repeats: int | None = None, threads: Sequence[int] = THREADS
) -> dict[str, Any]:
    """Measure every named workload at each torch thread count in ``threads``; the results and the machine."""
    before = torch.get_num_threads()
    try:
        info = machine()
        results = []
        for name in workloads:
            for count in threads:
                torch.set_num_threads(count)
                results.append(measure(SETTINGS[name], repeats))
        end_load = machine()["load_average"]
    finally:
        torch.set_num_threads(before)
    return {"machine": info, "end_load": end_load, "results": results}


def report(outcome: dict[str, Any]) -> list[str]:
    """The markdown section of RESULTS.md."""
    lines = [
        "## Episode cost",
        "",
        "One environment episode (reset, all steps, projection, evaluation of a new policy with its quantized "
        "tensors cached, costs, reward) against one FP32 forward pass over the same calibration data, and against "
        "naive copy-and-quantize (deepcopy the model, fresh simulator: calibrate, quantize every layer, evaluate). "
        f"Targets: episode <= {EPISODE_VS_FP32_TARGET}x FP32 forward, naive >= {NAIVE_SPEEDUP_TARGET}x episode. "
        "Ratios to FP32 are medians of the per-round ratios (paired in time), then the ratio of the medians. "
        "`quantized forward` is the policy applied and one forward pass, the least an episode can cost; "
        "`cold` is the first episode on a fresh problem. `plain FP32` is the model without any hooks (a copy): "
        f"target episode <= {EPISODE_VS_FP32_TARGET}x it, {NON_CONTIGUOUS_TARGET}x on `transposed` (a model whose "
        "layers see non-contiguous inputs, scored by fidelity); `first` is the mean of the first "
        f"{FIRST_EPISODES} episodes on a fresh problem, each a new policy, against the steady episode (median), "
        f"target <= {FIRST_VS_STEADY_TARGET}x. Every candidate's range is searched when the problem is built.",
        "",
        *machine_lines(outcome["machine"], outcome["end_load"]),
        "",
    ]
    rows = []
    for r in outcome["results"]:
        rows.append(
            [
                r["workload"],
                r["threads"],
                f"{r['searched']} / {r['calibration_samples']}",
                f"{r['fp32_ms']:.2f}",
                f"{r['quantized_forward_ms']:.2f} ({r['quantized_forward_vs_fp32']:.3f}x)",
                f"{r['episode_ms']:.2f}",
                f"**{r['episode_vs_fp32']:.3f}x** ({verdict(r['episode_vs_fp32'], EPISODE_VS_FP32_TARGET, True)}); "
                f"{r['episode_vs_fp32_of_medians']:.3f}x",
                f"{r['episode_vs_quantized_forward']:.3f}x",
                f"{r['plain_fp32_ms']:.2f}",
                f"**{r['episode_vs_plain_fp32']:.3f}x** "
                f"({verdict(r['episode_vs_plain_fp32'], plain_target(r['workload']), True)})",
                f"{r['first_episodes_ms']:.2f} over {r['first_episodes']} (**{r['first_vs_steady']:.2f}x**, "
                f"{verdict(r['first_vs_steady'], FIRST_VS_STEADY_TARGET, True)})",
                f"{r['naive_ms']:.1f}",
                f"**{r['naive_vs_episode']:.1f}x** ({verdict(r['naive_vs_episode'], NAIVE_SPEEDUP_TARGET, False)})",
                f"{r['naive_without_calibration_vs_episode']:.1f}x",
                f"{r['cold_episode_ms']:.1f} ({r['cold_vs_fp32']:.1f}x)",
                f"{r['repeats']} / {r['naive_repeats']} / {r['cold_repeats']}",
            ]
        )
    lines += table(
        [
            "workload",
            "threads",
            "layers / samples",
            "FP32 forward ms",
            "quantized forward ms (/ FP32)",
            "episode ms",
            "episode / FP32 (paired; of medians)",
            "episode / quantized forward",
            "plain FP32 ms",
            "episode / plain FP32 (paired)",
            "first episodes ms (/ steady)",
            "naive ms",
            "naive / episode",
            "naive without calibration / episode",
            "cold episode ms (/ FP32)",
            "rounds (all / naive / cold)",
        ],
        rows,
    )
    lines.append("")
    for r in outcome["results"]:
        parts = ", ".join(f"{k} {v:.1f}" for k, v in r["naive_parts_ms"].items())
        lines.append(
            f"- {r['workload']}, {r['threads']} thread(s): naive parts (median ms) {parts}; new policies evaluated "
            f"{r['new_policies']}; naive metrics equal the environment's: {r['naive_matches_env']}"
        )
    return lines


def main(argv: Sequence[str] | None = None, write: Writer = write_section) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", choices=sorted(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--repeats", type=int, default=None, help="rounds per workload (default: per workload)")
    args = parser.parse_args(argv)
    outcome = run(args.workloads, args.repeats)
    publish(NAME, report(outcome), write)
    return outcome


if __name__ == "__main__":
    main()
