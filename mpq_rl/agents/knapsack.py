"""The multiple-choice knapsack under a budget, solved exactly: one choice per layer, the least summed objective
within a cost capacity, and the next-best solutions in order.

HAWQ's integer linear program over Hessian sensitivities (:mod:`mpq_rl.agents.hawq`) and the surrogate searcher's
exact optimum of its additive model (:mod:`mpq_rl.agents.surrogate_search`) are both this problem.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from mpq_rl.search.budget import Choice

FRONTIER_ENTRIES = 400_000
"""The most partial policies :func:`ranked_policies` keeps (about 150 MB)."""


def _lower_hull(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The lower-left convex hull of (cost, objective) points, from the cheapest (least objective among ties) to
    the least objective (cheapest among ties): costs rise, objectives fall, and the slopes rise towards zero."""
    hull: list[tuple[float, float]] = []
    for c, v in sorted(points):
        if hull and v >= hull[-1][1]:
            continue  # costs more and is no better
        while len(hull) >= 2 and (hull[-1][1] - hull[-2][1]) * (c - hull[-2][0]) >= (v - hull[-2][1]) * (
            hull[-1][0] - hull[-2][0]
        ):
            hull.pop()
        hull.append((c, v))
    return hull


class _RelaxationBound:
    """Lower bounds on the objective of layers ``k, k+1, ...`` within a cost: the LP relaxation of the
    multiple-choice knapsack (Sinha and Zoltners, Operations Research 27(3), 1979). Every layer starts at its
    cheapest choice; then the segments of the layers' lower convex hulls are bought in order of objective saved
    per unit of cost, the last one in part. The segments of every suffix of layers are sorted once, so a bound is
    one binary search."""

    def __init__(self, options: list[list[tuple[float, float, Choice]]]) -> None:
        layers = len(options)
        self.base_cost = [0.0] * (layers + 1)
        self.base_value = [0.0] * (layers + 1)
        self.spent: list[np.ndarray] = [np.zeros(0)] * (layers + 1)
        self.saved: list[np.ndarray] = [np.zeros(0)] * (layers + 1)
        segments = np.zeros((0, 3))  # slope, cost, objective change
        for k in range(layers - 1, -1, -1):
            hull = np.array(_lower_hull([(c, v) for c, v, _ in options[k]]))
            self.base_cost[k] = self.base_cost[k + 1] + hull[0, 0]
            self.base_value[k] = self.base_value[k + 1] + hull[0, 1]
            steps = np.diff(hull, axis=0)
            segments = np.concatenate([segments, np.column_stack([steps[:, 1] / steps[:, 0], steps])])
            segments = segments[np.argsort(segments[:, 0], kind="stable")]
            self.spent[k] = np.cumsum(segments[:, 1])
            self.saved[k] = np.cumsum(segments[:, 2])

    def __call__(self, k: int, left: float) -> float | None:
        """The bound for layers ``k, ...`` within ``left`` (None if even their cheapest choices exceed it)."""
        extra = left - self.base_cost[k]
        if extra < 0.0:
            return None
        spent, saved = self.spent[k], self.saved[k]
        i = int(np.searchsorted(spent, extra, side="right"))
        value = self.base_value[k] + (float(saved[i - 1]) if i else 0.0)
        if i < len(spent):
            before, gained = (float(spent[i - 1]), float(saved[i - 1])) if i else (0.0, 0.0)
            value += (float(saved[i]) - gained) * (extra - before) / (float(spent[i]) - before)
        return value

    def reached(self, k: int, left: float) -> float:
        """The objective of a policy of layers ``k, ...`` that costs at most ``left`` (which their cheapest choices
        must fit): the relaxation's whole segments only, each layer at a vertex of its hull, an upper bound on
        their best policy within ``left`` (infinite if even their cheapest choices exceed it)."""
        extra = left - self.base_cost[k]
        if extra < 0.0:
            return math.inf
        i = int(np.searchsorted(self.spent[k], extra, side="right"))
        return self.base_value[k] + (float(self.saved[k][i - 1]) if i else 0.0)


def ranked_policies(
    objective: np.ndarray,
    costs: np.ndarray,
    capacity: float,
    limit: int | None = None,
    frontier: int = FRONTIER_ENTRIES,
    notes: dict[str, Any] | None = None,
) -> Iterator[list[Choice]]:
    """Every choice per layer with ``sum costs[s, w, a] <= capacity``, in increasing order of
    ``sum objective[s, w, a]``: the ILP's optimum first, then its next-best solutions, lazily; the first ``limit``
    of them only, when given.

    ``objective`` and ``costs`` are [layer, w, a]; NaN costs mark pairs that cannot be chosen; of policies with
    equal objective, the costlier comes first. A best-first
    (A*) search over the layers in order: a partial policy's key is its objective so far plus a lower bound on
    the rest (:class:`_RelaxationBound`, the LP relaxation within the capacity left). A complete policy is popped
    only when no partial one could complete below it, so policies come out exactly in order.

    With a ``limit`` the frontier stays bounded: the partial policies on the heap complete to different policies,
    each at most its objective so far plus :meth:`_RelaxationBound.reached`; once ``limit`` (less those already
    listed) of these upper bounds lie below ``t``, no policy above ``t`` can be among those still wanted, so
    whenever the heap doubles, every entry whose key exceeds the ``limit``-th smallest upper bound is dropped, and
    so is every new one above it. The policies listed, and their order, are those of the search without it.

    The heap never holds more than ``frontier`` entries: past it, only the half with the least keys is kept (a
    beam; ``notes["hawq_ranking"]`` then says ``"beam"``, else ``"exact"``). The policies still come out in
    increasing objective, each the best of those left, but a dropped one may be missing.
    """
    layers = costs.shape[0]
    options: list[list[tuple[float, float, Choice]]] = [[] for _ in range(layers)]
    for s, w, a in np.argwhere(~np.isnan(costs)).tolist():
        options[s].append((float(costs[s, w, a]), float(objective[s, w, a]), (w, a)))
    if any(not layer for layer in options) or limit == 0:
        return
    relaxation = _RelaxationBound(options)
    # Rounding in the bounds' sums must not let a bound exceed what a completion actually reaches.
    slack = 1e-9 * sum(max(abs(v) for _, v, _ in layer) for layer in options) + 1e-300
    # Nor let an upper bound's policy cost more than the search finds within the capacity.
    cost_slack = 1e-9 * sum(max(c for c, _, _ in layer) for layer in options) + 1e-300

    def bound(k: int, left: float) -> float | None:
        value = relaxation(k, left)
        return None if value is None else value - slack

    root = bound(0, capacity)
    if root is None:
        return
    order = itertools.count()
    wanted = math.inf if limit is None else limit
    threshold = math.inf
    # (key, minus the cost spent, arrival, depth, cost spent, objective, choices as (last, rest) links): among
    # policies of equal objective the costlier comes first (the second-order model cannot tell them apart; more
    # bits is the safer guess), then the one found first.
    heap: list[tuple[float, float, int, int, float, float, Any]] = [(root, 0.0, next(order), 0, 0.0, 0.0, None)]
    prune_at = min(4 * wanted, frontier)
    if notes is not None:
        notes["hawq_ranking"] = "exact"
    while heap:
        _, _, _, depth, spent, value, chosen = heapq.heappop(heap)
        if depth == layers:
            policy: list[Choice] = []
            while chosen is not None:
                choice, chosen = chosen
                policy.append(choice)
            yield policy[::-1]
            wanted -= 1
            if wanted == 0:
                return
            continue
        for cost, v, choice in options[depth]:
            rest = bound(depth + 1, capacity - spent - cost)
            if rest is None:
                continue
            total, used = value + v, spent + cost
            key = total if depth + 1 == layers else total + rest
            arrival = next(order)
            if key <= threshold:
                heapq.heappush(heap, (key, -used, arrival, depth + 1, used, total, (choice, chosen)))
        if len(heap) > prune_at:
            if limit is not None:
                reached = [entry[5] + relaxation.reached(entry[3], capacity - entry[4] - cost_slack) for entry in heap]
                threshold = min(threshold, heapq.nsmallest(int(wanted), reached)[-1] + slack)
                heap = [entry for entry in heap if entry[0] <= threshold]
            if len(heap) > frontier:
                heap = heapq.nsmallest(frontier // 2, heap)
                if notes is not None:
                    notes["hawq_ranking"] = "beam"
            heapq.heapify(heap)
            prune_at = min(max(prune_at, 2 * len(heap)), frontier)
