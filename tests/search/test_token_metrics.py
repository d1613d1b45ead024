"""Next-token scores: the KL proxy and the perplexity against direct computations."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from mpq_rl.search.metrics import Scorer, score


def _logits(seed: int, shape=(3, 5, 40)) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 3


def test_kl_is_the_mean_over_positions_of_the_next_token_kl():
    reference, outputs = _logits(0), _logits(0) + 0.3 * _logits(1)
    p = F.log_softmax(reference.double(), dim=-1)
    q = F.log_softmax(outputs.double(), dim=-1)
    direct = float((p.exp() * (p - q)).sum(-1).mean())  # sum_v p log(p / q), mean over 15 positions
    metrics = Scorer(reference, None)(outputs)
    assert metrics["kl"] == pytest.approx(direct, rel=1e-5)
    assert Scorer(reference, None)(reference)["kl"] == pytest.approx(0.0, abs=1e-6)


def test_nll_top1_and_agreement_per_position():
    reference, outputs = _logits(2), _logits(3)
    targets = torch.randint(0, 40, (3, 5), generator=torch.Generator().manual_seed(4))
    metrics = score(outputs, reference, targets)
    nll = F.cross_entropy(outputs.flatten(0, 1).double(), targets.flatten())
    assert metrics["nll"] == pytest.approx(float(nll), rel=1e-6)
    assert math.exp(metrics["nll"]) == pytest.approx(math.exp(float(nll)), rel=1e-5)
    assert metrics["top1"] == pytest.approx(float((outputs.argmax(-1) == targets).double().mean()))
    assert metrics["agreement"] == pytest.approx(float((outputs.argmax(-1) == reference.argmax(-1)).double().mean()))


def test_outputs_of_another_shape_are_refused():
    with pytest.raises(ValueError, match="do not match"):
        Scorer(_logits(0), None)(_logits(0, (3, 4, 40)))
