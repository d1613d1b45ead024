"""The evaluator: proxy metrics of a policy on the calibration split, behind a cache keyed by the policy.

``evaluate(policy)`` is a pure function of the policy for a given workload: the simulator swaps cached
quantized tensors into the live model, one forward pass runs over the pre-collated calibration batches, and the
outputs are scored against the FP32 outputs (and labels, when there are any). A repeated policy costs a dict
lookup. The cache persists to JSON (resuming a search relies on it) and can be merged from other processes.
Everything an evaluator needs comes with its :class:`~mpq_rl.workloads.workload.Workload` (model, batches, layers, range
settings); a worker process of a parallel search builds the same workload from the run's problem spec.

The test split is never touched here: held-out scores come from :func:`evaluate_on_test`, which a search calls
once, on its final answer.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from pathlib import Path

import torch

from mpq_rl.errors import UserError
from mpq_rl.io import atomic_write_json, read_json
from mpq_rl.quantization.policy import BitPair, Policy
from mpq_rl.quantization.simulator import QuantSimulator
from mpq_rl.search.metrics import Scorer, score
from mpq_rl.workloads.data import Batches
from mpq_rl.workloads.model_io import model_outputs
from mpq_rl.workloads.workload import Workload

Metrics = dict[str, float]
CACHE_FORMAT = "mpq_rl.evaluations/1"


def policy_key(policy: Mapping[str, BitPair], names: tuple[str, ...]) -> str:
    """A compact, order-fixed key for a policy over ``names``: ``"8,8|4,6|..."``."""
    return "|".join(f"{policy[n][0]},{policy[n][1]}" for n in names)


class EvaluationCache:
    """Proxy metrics by policy key, with hit/miss counts; saved atomically as JSON."""

    def __init__(self, entries: dict[str, Metrics] | None = None) -> None:
        self.entries: dict[str, Metrics] = dict(entries or {})
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def get(self, key: str) -> Metrics | None:
        found = self.entries.get(key)
        if found is None:
            self.misses += 1
        else:
            self.hits += 1
        return found

    def put(self, key: str, metrics: Metrics) -> None:
        self.entries[key] = dict(metrics)

    def merge(self, other: EvaluationCache | Mapping[str, Metrics]) -> None:
        entries = other.entries if isinstance(other, EvaluationCache) else other
        self.entries.update(entries)

    def save(self, path: str | Path) -> None:
        atomic_write_json(path, {"format": CACHE_FORMAT, "entries": self.entries})

    @classmethod
    def load(cls, path: str | Path, metrics: Collection[str] | None = None) -> EvaluationCache:
        """The cache saved in ``path`` (empty if there is none); with ``metrics``, every entry must hold exactly
        those. A file that is not such a cache is a :class:`UserError` that says how to start afresh."""
        path = Path(path)
        if not path.is_file():
            return cls()
        fix = "delete it to start the cache afresh (policies are evaluated again)"
        data = read_json(path, fix)
        entries = data.get("entries") if isinstance(data, dict) else None
        if not isinstance(entries, dict) or data.get("format") != CACHE_FORMAT:
            raise UserError(f"evaluation cache {path} has an unknown format: {fix}")
        for number, found in enumerate(entries.values(), start=1):
            if not isinstance(found, dict) or not all(_is_number(v) or v is None for v in found.values()):
                raise UserError(f"evaluation cache {path}: entry {number} is not metric names and numbers: {fix}")
            if metrics is not None and set(found) != set(metrics):
                raise UserError(
                    f"evaluation cache {path}: entry {number} has the metrics {sorted(found)}, "
                    f"not {sorted(metrics)}: {fix}"
                )
        # A metric that was not a number is saved as null (JSON has no NaN) and read back as NaN.
        return cls({key: {m: math.nan if v is None else v for m, v in found.items()} for key, found in entries.items()})


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def calibrated_simulator(workload: Workload) -> QuantSimulator:
    """A simulator over every layer of ``workload``, its activation ranges calibrated on the calibration split."""
    ranges = workload.ranges
    simulator = QuantSimulator(
        workload.model,
        workload.layers.names,
        weight_range=ranges.weight_range,
        activation_range=ranges.activation_range,
        percentile=ranges.percentile,
        seed=ranges.seed,
    )
    if workload.calibration is not None:
        simulator.calibrate((inputs for inputs, _ in workload.calibration), workload.calibration.num_samples)
    return simulator


class Evaluator:
    """Scores policies of one workload on its calibration batches, caching every result."""

    def __init__(self, workload: Workload, cache: EvaluationCache | None = None) -> None:
        if workload.calibration is None:
            raise UserError("evaluating a policy needs calibration data: set data.name or data.factory")
        self.workload = workload
        self.names = tuple(workload.layers.names)
        self.calibration: Batches = workload.calibration
        self.simulator = calibrated_simulator(workload)
        self.reference = model_outputs(workload.model, self.calibration)
        self.targets = self.calibration.targets()
        self.scorer = Scorer(self.reference, self.targets)
        self.fp32 = self.scorer(self.reference)
        self.cache = cache if cache is not None else EvaluationCache()

    def evaluate(self, policy: Mapping[str, BitPair]) -> Metrics:
        """Proxy metrics of ``policy`` (every layer named) on the calibration split; cached."""
        key = policy_key(policy, self.names)
        found = self.cache.get(key)
        if found is not None:
            return dict(found)
        metrics = self.measure(policy)
        self.cache.put(key, metrics)
        return dict(metrics)

    def measure(self, policy: Mapping[str, BitPair]) -> Metrics:
        """:meth:`evaluate` without the cache: for policies outside the search (baselines), which must not count
        as, or be replayed as, the search's evaluations."""
        self.simulator.apply(policy)
        return self.scorer(model_outputs(self.workload.model, self.calibration))

    def close(self) -> None:
        """Give the model back in FP32 with no hooks."""
        self.simulator.detach()


def evaluate_on_test(workload: Workload, policy: Policy, simulator: QuantSimulator | None = None) -> Metrics:
    """Held-out metrics of ``policy`` (FP32 when ``policy`` is empty) on the test split, scored against FP32.

    Pass the search's simulator to reuse its calibrated ranges; otherwise one is calibrated here on the
    calibration split (never on test data).
    """
    if workload.test is None:
        raise UserError("held-out evaluation needs a test split: set data.name or data.factory")
    own = simulator is None
    if own:
        simulator = calibrated_simulator(workload)
    simulator.restore()
    reference = model_outputs(workload.model, workload.test)
    with torch.no_grad(), simulator.applied(policy):
        outputs = model_outputs(workload.model, workload.test)
    if own:
        simulator.detach()
    return score(outputs, reference, workload.test.targets())
