"""Size budgets: ``budget.bpw`` (average stored bits per weight) and ``budget.bytes`` as fractions of the reference.

A size budget is on the ``size`` cost metric (stored bits of the quantized layers: weights at their format's bits
per weight, scales included, and biases at 32 bits). ``bpw`` counts the searched layers' weights: the target size
is ``bpw`` bits per searched weight plus what the rest costs whatever the search does (biases, and the layers
outside the search at their fixed bits). ``bytes`` is the size of every quantized layer. Either becomes the
fraction of the reference size (W8 at the deployed activation precision) that :class:`~mpq_rl.search.budget.Budget`
enforces, so every searcher keeps it exactly as it keeps any budget.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from mpq_rl.config import BudgetConfig
from mpq_rl.hardware import CostTable
from mpq_rl.hardware.roofline import BIAS_BITS
from mpq_rl.quantization.policy import BitPair
from mpq_rl.workloads.layers import LayerTable

SIZE_METRIC = "size"


def _size_terms(
    costs: CostTable, layers: LayerTable, searched: Sequence[str], fixed: Mapping[str, BitPair]
) -> tuple[int, float]:
    """The searched layers' weight count, and the stored bits that do not depend on the search (the searched
    layers' biases and the fixed layers at their bits)."""
    chosen = set(searched)
    weights = sum(math.prod(layer.weight_shape) for layer in layers if layer.name in chosen)
    biases = sum(layer.params - math.prod(layer.weight_shape) for layer in layers if layer.name in chosen)
    sizes = costs.lookup({**costs.reference_policy(), **fixed}, SIZE_METRIC)
    fixed_bits = math.fsum(float(sizes[i]) for i, name in enumerate(costs.layer_names) if name in fixed)
    return weights, BIAS_BITS * biases + fixed_bits


def size_fraction(
    budget: BudgetConfig, costs: CostTable, layers: LayerTable, searched: Sequence[str], fixed: Mapping[str, BitPair]
) -> float:
    """``budget.bpw`` or ``budget.bytes`` as a fraction of ``costs``' reference size; ``budget.fraction`` when
    the budget is not a size."""
    if not budget.on_size:
        return budget.fraction
    reference = costs.reference(SIZE_METRIC)
    if budget.bytes is not None:
        return 8.0 * budget.bytes / reference
    weights, constant = _size_terms(costs, layers, searched, fixed)
    return (budget.bpw * weights + constant) / reference


def bits_per_weight(
    size_ratio: float, costs: CostTable, layers: LayerTable, searched: Sequence[str], fixed: Mapping[str, BitPair]
) -> float:
    """The searched layers' average stored bits per weight under a policy whose size is ``size_ratio`` of the
    reference (``Episode.cost_ratio["size"]``): the inverse of :func:`size_fraction` with ``bpw``."""
    weights, constant = _size_terms(costs, layers, searched, fixed)
    return (size_ratio * costs.reference(SIZE_METRIC) - constant) / weights
