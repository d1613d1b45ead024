"""Picking the reported policy so that it holds on unseen data: a selection split of the calibration data.

With hundreds of policies scored on a few hundred calibration samples, the one with the best calibration score is
partly the one that fits those samples' noise (selection bias, the winner's curse). :func:`held_aside` cuts the
calibration split in two: the search scores policies on the first part only; at the end, :func:`pick` re-scores
the ``k`` best distinct in-budget policies on the second part, which the search never saw, and chooses by one of
the :data:`RULES`:

- ``top1``: the best search score (what every searcher reports by default; no re-scoring);
- ``selection``: the best score on the selection part alone (ties: the better search score, then the cheaper);
- ``pooled``: the best score over both parts together, weighted by their samples (the re-scored candidates are
  judged on all the calibration data; the others could only be judged on the search part).

Each re-scored candidate is a policy scored once more: count ``k`` evaluations against the search's budget
(e.g. give the searcher ``episodes - k``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mpq_rl.errors import UserError
from mpq_rl.search.episode import Episode
from mpq_rl.search.problem import SearchProblem
from mpq_rl.search.rewards import proxy_value
from mpq_rl.search.subsets import SubsetScorer, split_samples
from mpq_rl.workloads.data import Batches

RULES = ("top1", "selection", "pooled")


def held_aside(calibration: Batches, fraction: float, seed: int) -> tuple[Batches, Batches]:
    """The search part and the selection part of ``calibration`` (``fraction`` of its samples, drawn by
    ``seed``)."""
    if not 0.0 < fraction < 1.0:
        raise UserError(f"the selection split must be a fraction in (0, 1) of the calibration samples, got {fraction}")
    return split_samples(calibration, fraction, seed)


def top_candidates(episodes: Sequence[Episode], k: int, metric: str) -> list[Episode]:
    """The ``k`` best distinct in-budget policies of ``episodes``: highest reward first, ties to the cheaper (the
    order in which a run picks its best)."""
    best: dict[tuple, Episode] = {}
    for episode in episodes:
        if episode.within_budget:
            best.setdefault(tuple(sorted(episode.policy.items())), episode)
    ranked = sorted(best.values(), key=lambda e: (-e.reward, e.cost_ratio[metric]))
    return ranked[:k]


@dataclass(frozen=True)
class Pick:
    """The chosen policy's episode (scored on the search part), its score on the selection part (None for
    ``top1``) and how many candidates were re-scored."""

    episode: Episode
    selection_proxy: float | None
    rescored: int


def pick(
    episodes: Sequence[Episode],
    rule: str,
    problem: SearchProblem,
    selection: SubsetScorer | None = None,
    k: int = 5,
) -> Pick | None:
    """The policy ``rule`` picks among ``episodes`` (None if none is in budget); ``selection`` scores the
    selection part (needed by every rule but ``top1``)."""
    if rule not in RULES:
        raise UserError(f"unknown selection rule {rule!r}: use one of {list(RULES)}")
    candidates = top_candidates(episodes, 1 if rule == "top1" else k, problem.metric)
    if not candidates:
        return None
    if rule == "top1":
        return Pick(candidates[0], None, 0)
    if selection is None:
        raise ValueError(f"selection rule {rule!r} needs a scorer for the selection part")
    scores = [proxy_value(m, problem.proxy) for m in selection.score([e.policy for e in candidates])]
    searched = problem.evaluator.calibration.num_samples
    held = selection.samples

    def key(i: int) -> tuple[float, ...]:
        own = (
            scores[i]
            if rule == "selection"
            else (searched * candidates[i].proxy + held * scores[i]) / (searched + held)
        )
        return (own, candidates[i].proxy, -candidates[i].cost_ratio[problem.metric])

    chosen = max(range(len(candidates)), key=lambda i: (*key(i), -i))
    return Pick(candidates[chosen], scores[chosen], len(candidates))
