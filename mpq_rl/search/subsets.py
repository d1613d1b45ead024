"""Scores on part of the calibration data: a policy's proxy on chosen calibration samples, or on other batches.

An evolutionary search ranks many offspring on a few samples and only the survivors on more
(:mod:`mpq_rl.agents.evolution`); a held-aside selection split re-scores the best candidates of a search on samples
it never saw (:mod:`mpq_rl.search.selection`). Both score through the problem's own simulator (its calibrated
ranges, its cached quantized weights), against the FP32 outputs on the same samples, with the same metrics as the
evaluator. Nothing here is cached or recorded: whoever scores decides how to count it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from mpq_rl.quantization.policy import BitPair
from mpq_rl.search.evaluator import Metrics
from mpq_rl.search.metrics import Scorer
from mpq_rl.search.problem import SearchProblem
from mpq_rl.workloads.data import Batches
from mpq_rl.workloads.model_io import model_outputs


def take(value: Any, index: torch.Tensor) -> Any:
    """``value`` (a tensor, or a dict, tuple or list of them) with the rows ``index`` of every tensor."""
    if isinstance(value, torch.Tensor):
        return value[index.to(value.device)]
    if isinstance(value, dict):
        return {k: take(v, index) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(take(v, index) for v in value)
    return value


def select_samples(batches: Batches, samples: Sequence[int]) -> Batches:
    """The samples of ``batches`` at positions ``samples`` (in batch order), keeping the batches' boundaries."""
    wanted = np.zeros(batches.num_samples, dtype=bool)
    wanted[np.asarray(samples, dtype=np.int64)] = True
    chosen, start = [], 0
    for inputs, targets in batches:
        size = len(targets) if targets is not None else _rows(inputs)
        rows = torch.from_numpy(np.flatnonzero(wanted[start : start + size]))
        start += size
        if len(rows):
            chosen.append((take(inputs, rows), None if targets is None else take(targets, rows)))
    return Batches(chosen, int(wanted.sum()))


def split_samples(batches: Batches, fraction: float, seed: int) -> tuple[Batches, Batches]:
    """``batches`` cut in two at random (seeded): the first with ``1 - fraction`` of the samples, the second with
    the rest (at least one sample each)."""
    order = np.random.default_rng(seed).permutation(batches.num_samples)
    held = min(max(round(fraction * batches.num_samples), 1), batches.num_samples - 1)
    return select_samples(batches, np.sort(order[held:])), select_samples(batches, np.sort(order[:held]))


def _rows(inputs: Any) -> int:
    if isinstance(inputs, torch.Tensor):
        return len(inputs)
    first = next(iter(inputs.values())) if isinstance(inputs, dict) else inputs[0]
    return _rows(first)


class SubsetScorer:
    """Metrics of a problem's policies on ``batches`` (default: the problem's calibration batches), or on chosen
    samples of them, scored against the FP32 outputs on the same samples."""

    def __init__(self, problem: SearchProblem, batches: Batches | None = None) -> None:
        self.problem = problem
        self.batches = batches if batches is not None else problem.evaluator.calibration
        simulator = problem.evaluator.simulator
        simulator.restore()
        self.reference = model_outputs(problem.workload.model, self.batches)
        self.targets = self.batches.targets()

    @property
    def samples(self) -> int:
        return self.batches.num_samples

    def score(self, policies: Sequence[Mapping[str, BitPair]], samples: Sequence[int] | None = None) -> list[Metrics]:
        """The metrics of each of ``policies`` (every layer's bits, as :meth:`SearchProblem.policy` gives them) on
        the samples at positions ``samples`` (default: all)."""
        batches, reference, targets = self.batches, self.reference, self.targets
        if samples is not None:
            index = torch.from_numpy(np.sort(np.asarray(samples, dtype=np.int64)))
            batches = select_samples(self.batches, index.numpy())
            reference = self.reference[index]
            targets = None if targets is None else targets[index]
        scorer = Scorer(reference, targets)
        simulator = self.problem.evaluator.simulator
        found = []
        for policy in policies:
            simulator.apply(policy)
            found.append(scorer(model_outputs(self.problem.workload.model, batches)))
        return found
