"""The baseline searchers on a small digits problem whose optimum exhaustive search finds; HAWQ's pieces exactly."""

import dataclasses
import itertools
import statistics
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from mpq_rl.agents import build_searcher
from mpq_rl.agents.hessian import calibration_loss, hessian_traces
from mpq_rl.agents.knapsack import ranked_policies
from mpq_rl.config import parse_config
from mpq_rl.errors import UserError
from mpq_rl.runs.assembly import build_problem
from mpq_rl.search.searcher import SearchContext
from mpq_rl.workloads.data import Batches

SEARCHED = ("block.conv1", "down", "pw", "down2")


@pytest.fixture(scope="module")
def small_problem(digits_workload, digits_costs, digits_evaluator):
    """Four searched layers, weights at 2/4/8 bits, activations at 8: 81 policies."""
    config = parse_config({"quantization": {"weight_bits": [2, 4, 8], "activation_bits": [8]}, "budget": 0.8})
    workload = dataclasses.replace(
        digits_workload,
        searched=SEARCHED,
        fixed={name: (8, 8) for name in digits_workload.layers.names if name not in SEARCHED},
    )
    return build_problem(config, workload=workload, costs=digits_costs, evaluator=digits_evaluator)


def run(problem, name, episodes, seed=0, **kwargs):
    episodes_seen = []
    context = SearchContext(problem=problem, episodes=episodes, seed=seed, record=episodes_seen.append, output=None)
    build_searcher(name, kwargs).search(context)
    return episodes_seen


def best_in_budget(episodes):
    return max(e.proxy for e in episodes if e.within_budget)


@pytest.fixture(scope="module")
def optimum(small_problem):
    budget = small_problem.budget
    fitting = [list(p) for p in itertools.product([(0, 0), (1, 0), (2, 0)], repeat=len(SEARCHED)) if budget.fits(p)]
    return max(small_problem.score(p).proxy for p in fitting), len(fitting)


def test_exhaustive_scores_every_in_budget_policy_and_finds_the_optimum(small_problem, optimum):
    best, count = optimum
    episodes = run(small_problem, "exhaustive", episodes=1000)
    assert len(episodes) == count < 81
    assert all(e.within_budget for e in episodes)
    assert best_in_budget(episodes) == best


@pytest.mark.parametrize("name", ["greedy", "hawq"])
def test_model_based_searchers_get_close_to_the_optimum_and_beat_random(small_problem, optimum, name):
    kwargs = {"samples": 2} if name == "hawq" else {}
    episodes = run(small_problem, name, episodes=20, **kwargs)
    random_proxies = [e.proxy for e in run(small_problem, "random", episodes=20, seed=3)]
    found = best_in_budget(episodes)
    assert found >= optimum[0] - 0.01
    assert found >= statistics.median(random_proxies)


def test_uniform_proposes_in_budget_uniform_settings_highest_first(small_problem):
    episodes = run(small_problem, "uniform", episodes=50)
    assert episodes and all(e.within_budget for e in episodes)
    searched = [[tuple(e.policy[n]) for n in SEARCHED] for e in episodes]
    assert all(len(set(bits)) == 1 for bits in searched)
    costs = [e.cost_ratio["latency"] for e in episodes]
    assert costs == sorted(costs, reverse=True)
    fitting = [w for w in (2, 4, 8) if small_problem.budget.fits([(small_problem.budget.weight_codes.index(w), 0)] * 4)]
    assert [bits[0][0] for bits in searched] == sorted(fitting, reverse=True)


def test_random_is_in_budget_and_seeded(small_problem):
    first = run(small_problem, "random", episodes=12, seed=5)
    again = run(small_problem, "random", episodes=12, seed=5)
    other = run(small_problem, "random", episodes=12, seed=6)
    assert all(e.within_budget for e in first)
    assert [e.policy for e in first] == [e.policy for e in again]
    assert [e.policy for e in first] != [e.policy for e in other]


@pytest.mark.parametrize("name", ["random", "greedy", "hawq", "exhaustive", "uniform"])
def test_every_searcher_stops_at_the_evaluation_budget(small_problem, name):
    kwargs = {"samples": 1} if name == "hawq" else {}
    assert len(run(small_problem, name, episodes=2, **kwargs)) == 2
    if name != "uniform":
        assert len(run(small_problem, name, episodes=9, **kwargs)) == 9


def test_exhaustive_refuses_a_space_over_a_million(digits_workload, digits_costs, digits_evaluator):
    problem = build_problem(parse_config({}), workload=digits_workload, costs=digits_costs, evaluator=digits_evaluator)
    with pytest.raises(UserError, match=f"enumerate {49**9:,} policies, more than 1,000,000"):
        run(problem, "exhaustive", episodes=5)


@pytest.mark.parametrize("name", ["uniform", "random", "greedy", "hawq", "exhaustive"])
def test_unknown_kwargs_are_user_errors_naming_the_allowed_ones(name):
    with pytest.raises(UserError, match="unknown key 'bogus'"):
        build_searcher(name, {"bogus": 1})
    with pytest.raises(UserError, match="sensitivity_share"):
        build_searcher("greedy", {"sensitivity": 0.5})


class TinyMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 6)
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


def test_hutchinson_traces_match_the_exact_hessian():
    torch.manual_seed(0)
    model = TinyMLP()
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    batches = Batches([(x[:10], y[:10]), (x[10:], y[10:])], 16)
    traces = hessian_traces(
        model, {"fc1": model.fc1, "fc2": model.fc2}, batches, calibration_loss("cross_entropy"), samples=600
    )
    w1, b1, w2, b2 = (p.detach() for p in (model.fc1.weight, model.fc1.bias, model.fc2.weight, model.fc2.bias))

    def loss(w1_, w2_, x_=x):
        return F.cross_entropy(F.linear(torch.tanh(F.linear(x_, w1_, b1)), w2_, b2), y)

    def trace(fn, at):
        return float(torch.autograd.functional.hessian(fn, at).reshape(at.numel(), at.numel()).trace())

    exact_weight = {"fc1": trace(lambda w: loss(w, w2), w1), "fc2": trace(lambda w: loss(w1, w), w2)}
    hidden = torch.tanh(F.linear(x, w1, b1))
    exact_input = {
        "fc1": trace(lambda x_: loss(w1, w2, x_), x),
        "fc2": trace(lambda h: F.cross_entropy(F.linear(h, w2, b2), y), hidden),
    }
    for name in ("fc1", "fc2"):
        assert traces.weight[name] == pytest.approx(exact_weight[name], rel=0.15)
        assert traces.activation[name] == pytest.approx(exact_input[name], rel=0.15)
    assert traces.weight_elements == {"fc1": 24, "fc2": 18}
    assert traces.activation_elements == {"fc1": 64, "fc2": 96}
    assert all(p.grad is None for p in model.parameters())


class WithUnusedHead(TinyMLP):
    """A TinyMLP that also runs a head whose output is dropped, like a transformer's pooler next to its embeddings."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        out = super().forward(x)
        self.head(out)
        return out


def test_a_layer_off_the_loss_path_has_zero_traces_and_the_others_are_unchanged():
    torch.manual_seed(0)
    model = WithUnusedHead()
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    batches = Batches([(x, y)], 16)
    loss = calibration_loss("cross_entropy")
    with_head = hessian_traces(model, {"fc1": model.fc1, "fc2": model.fc2, "head": model.head}, batches, loss)
    without = hessian_traces(model, {"fc1": model.fc1, "fc2": model.fc2}, batches, loss)
    assert with_head.weight["head"] == with_head.activation["head"] == 0.0
    for name in ("fc1", "fc2"):
        assert with_head.weight[name] == pytest.approx(without.weight[name]) and with_head.weight[name] > 0
        assert with_head.activation[name] == pytest.approx(without.activation[name])


class TinyAttention(nn.Module):
    """One self-attention block through ``F.scaled_dot_product_attention``, as in transformers' default models."""

    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(4, 12)
        self.out = nn.Linear(4, 3)

    def forward(self, x):
        q, k, v = (t.unsqueeze(1) for t in self.qkv(x).chunk(3, dim=-1))  # one head: (batch, 1, tokens, 4)
        return self.out(F.scaled_dot_product_attention(q, k, v).squeeze(1)).mean(dim=1)


def test_traces_through_fused_attention_match_the_exact_hessian():
    torch.manual_seed(0)
    model = TinyAttention()
    x, y = torch.randn(8, 5, 4), torch.randint(0, 3, (8,))
    traces = hessian_traces(model, {"qkv": model.qkv}, Batches([(x, y)], 8), calibration_loss("cross_entropy"), 600)
    b, out_w, out_b = model.qkv.bias.detach(), model.out.weight.detach(), model.out.bias.detach()

    def loss(w):
        q, k, v = F.linear(x, w, b).chunk(3, dim=-1)
        attention = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1) @ v  # the math kernel, by hand
        return F.cross_entropy(F.linear(attention, out_w, out_b).mean(dim=1), y)

    w = model.qkv.weight.detach()
    exact = float(torch.autograd.functional.hessian(loss, w).reshape(w.numel(), w.numel()).trace())
    assert traces.weight["qkv"] == pytest.approx(exact, rel=0.15) and exact != 0


@pytest.mark.parametrize("seed", range(6))
def test_ranked_ilp_solutions_match_brute_force_in_order(seed):
    rng = np.random.default_rng(seed)
    objective = rng.random((3, 3, 2))
    costs = rng.random((3, 3, 2))
    costs[1, 2, 1] = np.nan
    objective[2] = 0.5  # a layer the objective cannot tell apart: ties, broken by cost, costliest first
    capacity = 1.2
    pairs = [(w, a) for w in range(3) for a in range(2)]

    def total(table, policy):
        return sum(table[s][p] for s, p in enumerate(policy))

    ranked = sorted(
        (total(objective, policy), -total(costs, policy), list(policy))
        for policy in itertools.product(pairs, repeat=3)
        if not np.isnan(total(costs, policy)) and total(costs, policy) <= capacity
    )
    assert len(ranked) > 10
    assert list(ranked_policies(objective, costs, capacity)) == [policy for _, _, policy in ranked]
    assert list(ranked_policies(objective, costs, 0.0)) == []


@pytest.mark.parametrize("seed", range(4))
def test_a_bounded_ranking_lists_the_first_solutions_of_the_whole_one(seed):
    """The frontier pruned to what ``limit`` solutions can use (and a beam past ``frontier`` entries) keeps the exact
    ranking whenever the beam is not needed, ties included."""
    rng = np.random.default_rng(seed)
    objective, costs = rng.random((8, 3, 3)), rng.random((8, 3, 3))
    objective[2] = 0.5
    if seed % 2:
        objective = np.round(objective, 1)  # many ties
    capacity = float(costs.mean() * 8 * 0.8)
    whole = list(itertools.islice(ranked_policies(objective, costs, capacity), 60))
    for limit in (1, 3, 17, 60):
        notes = {}
        assert list(ranked_policies(objective, costs, capacity, limit=limit, notes=notes)) == whole[:limit]
        assert notes["hawq_ranking"] == "exact"
    notes = {}
    beam = list(ranked_policies(objective, costs, capacity, limit=60, frontier=20, notes=notes))
    assert notes["hawq_ranking"] == "beam" and beam and len(beam) <= 60
    totals = [sum(objective[s][p] for s, p in enumerate(policy)) for policy in beam]
    assert totals == sorted(totals)  # still in order of objective, each the best of those kept


def test_hawq_on_50_layers_at_200_evaluations_stays_under_2_gb():
    """hawq's whole run (problem, Hessian traces, ranked search, 200 evaluations) in a fresh process."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # benchmarks/ is not part of the installed package
    from benchmarks.hawq_memory import measure

    result = measure(depth=50, evaluations=200, ceiling_gb=2.0, seconds=600, grid="small")
    assert not result["exceeded"] and not result["timed_out"], result
    assert result["evaluations"] == 200 and result["peak_mb"] <= 2048
