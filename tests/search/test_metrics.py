"""Scoring metrics against torch's own definitions."""

import pytest
import torch
import torch.nn.functional as F

from mpq_rl.search.metrics import Scorer, agreement, cosine, score, top1


@pytest.fixture
def logits():
    generator = torch.Generator().manual_seed(0)
    reference = torch.randn(50, 10, generator=generator)
    noisy = reference + 0.5 * torch.randn(50, 10, generator=generator)
    return reference, noisy


def test_metrics_match_torch_definitions(logits):
    reference, noisy = logits
    targets = reference.argmax(dim=1)
    targets[:5] = (targets[:5] + 1) % 10
    expected_kl = F.kl_div(F.log_softmax(noisy, 1), F.log_softmax(reference, 1), log_target=True, reduction="batchmean")
    assert score(noisy, reference, None)["kl"] == pytest.approx(float(expected_kl), rel=1e-5)
    assert cosine(noisy, reference) == pytest.approx(float(F.cosine_similarity(noisy, reference).mean()), rel=1e-5)
    assert agreement(noisy, reference) == pytest.approx(float((noisy.argmax(1) == reference.argmax(1)).float().mean()))
    assert top1(reference, targets) == 0.9
    assert score(reference, reference, targets) == {
        "cosine": pytest.approx(1.0),
        "agreement": 1.0,
        "kl": pytest.approx(0.0, abs=1e-12),
        "top1": 0.9,
    }


def test_embeddings_get_cosine_only_and_scorer_is_reusable(logits):
    reference, noisy = logits
    embeddings = Scorer(reference.reshape(50, 2, 5, 1), None)  # 3-D outputs are a language model's token logits
    assert set(embeddings(noisy.reshape(50, 2, 5, 1))) == {"cosine"}
    scorer = Scorer(reference, None)
    assert scorer(noisy) == scorer(noisy) == score(noisy, reference, None)
