"""Ties between the searched policy and uniform settings on calibration data.

A search picks its best policy on the calibration split; on a small split many policies score the same (one
image of 400 is 0.25 points), and a uniform setting the searcher never evaluated can tie the best one there while
costing less. The held-out split can then rank them either way. This says so, in the report and the summary.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from mpq_rl.quantization.formats import label
from mpq_rl.search.metrics import format_metric


def tied_uniform(best: dict[str, Any] | None, uniform: Sequence[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """The uniform settings (items of ``summary.json``'s ``uniform``) whose calibration proxy equals the best
    policy's, each with ``w_bits``, ``a_bits``, ``cost_ratio`` (of ``metric``) and ``cheaper`` (than the best)."""
    if best is None:
        return []
    found = []
    for item in uniform:
        if _ties(item, best):
            cost = item["cost_ratio"][metric]
            found.append(
                {
                    "w_bits": item["w_bits"],
                    "a_bits": item["a_bits"],
                    "cost_ratio": cost,
                    "cheaper": cost < best["cost_ratio"][metric],
                }
            )
    return found


def _ties(item: dict[str, Any], best: dict[str, Any]) -> bool:
    return "proxy" in item and math.isclose(item["proxy"], best["proxy"], rel_tol=1e-9, abs_tol=1e-12)


def calibration_ties(
    best: dict[str, Any] | None,
    best_test: dict[str, float] | None,
    uniform: Sequence[dict[str, Any]],
    proxy: str,
    metric: str,
) -> list[str]:
    """Notes for the report (none when there is nothing to say): each uniform setting that ties the best policy
    on calibration data, and which of the two costs less; each cheaper uniform setting that scores at least as well
    on the held-out split, with its lower calibration score, which is why the search did not choose it."""
    if best is None:
        return []
    lines = []
    mine = best["cost_ratio"][metric]
    for tie in tied_uniform(best, uniform, metric):
        name = f"W{label(tie['w_bits'])}A{label(tie['a_bits'])}"
        if tie["cheaper"]:
            cheaper = f"the uniform setting is cheaper ({tie['cost_ratio']:.3f} against {mine:.3f} of W8A8 {metric})"
        elif math.isclose(tie["cost_ratio"], mine):
            cheaper = f"both cost {mine:.3f} of W8A8 {metric}"
        else:
            cheaper = f"the searched policy is cheaper ({mine:.3f} against {tie['cost_ratio']:.3f} of W8A8 {metric})"
        lines.append(
            f"note: the best policy ties uniform {name} on calibration {proxy} "
            f"({format_metric(best['metrics'][proxy], proxy)}); {cheaper}"
        )
    if best_test is None or proxy not in best_test:
        return lines
    sign = -1.0 if proxy == "kl" else 1.0  # KL: lower is better
    for item in uniform:
        cost, test = item["cost_ratio"][metric], item["test"].get(proxy)
        if test is None or cost >= mine or sign * test < sign * best_test[proxy] or _ties(item, best):
            continue
        lines.append(
            f"note: uniform W{label(item['w_bits'])}A{label(item['a_bits'])} is cheaper ({cost:.3f} against "
            f"{mine:.3f}) and scores {format_metric(test, proxy)} on the test split against the best policy's "
            f"{format_metric(best_test[proxy], proxy)}, but {format_metric(item['metrics'][proxy], proxy)} on "
            f"calibration data against {format_metric(best['metrics'][proxy], proxy)}: the search chooses on "
            "calibration data only"
        )
    return lines
