"""llama.cpp's fixed mixes (mpq_rl.agents.fixed_mix) against the rules of src/llama-quant.cpp, worked by hand."""

import numpy as np
import pytest

from mpq_rl.agents import build_searcher
from mpq_rl.agents.fixed_mix import fixed_mix_choices, more_bits, role, steps
from mpq_rl.errors import UserError
from mpq_rl.search.budget import Budget

BLOCKS = 16
LINEARS = ("self_attn.q_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.down_proj")
NAMES = tuple(f"model.layers.{i}.{linear}" for i in range(BLOCKS) for linear in LINEARS) + ("lm_head",)
LADDER_BPW = (3.5, 4.5, 5.5, 6.5)
"""Four weight candidates priced by bits per weight, listed out of order to check that the ladder sorts them."""
ORDER = (2, 0, 3, 1)


def budget(bpw: float) -> Budget:
    """Every searched layer has 1000 weights; cost is bits, the reference is the model at 8 bits per weight."""
    bits = np.array([LADDER_BPW[i] for i in ORDER])
    costs = np.broadcast_to(1000.0 * bits[None, :, None], (len(NAMES), len(bits), 1)).copy()
    return Budget(NAMES, ORDER, (16,), costs, 0.0, 8000.0 * len(NAMES), bpw / 8, "size")


def test_more_bits_matches_llama_cpp_for_30_blocks():
    # n/8 = 3, 7n/8 = 26: blocks 0-2 and 26-29, and every third block from 5 ((i - 3) % 3 == 2).
    assert {i for i in range(30) if more_bits(i, 30)} == {0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29}


def test_roles_from_hugging_face_and_llama_cpp_names():
    assert role("model.layers.3.self_attn.v_proj") == role("blk.3.attn_v") == "attn_v"
    assert role("model.layers.3.mlp.down_proj") == role("blk.3.ffn_down") == "ffn_down"
    assert role("model.layers.3.self_attn.o_proj") == role("blk.3.attn_output") == "attn_output"
    assert role("lm_head") == role("output") == "output"
    assert role("model.layers.3.self_attn.q_proj") == role("model.embed_tokens") == "other"


def test_steps_follow_each_mix():
    # Q3_K_M: attn_v Q5_K in blocks 0-1 then Q4_K; ffn_down Q5_K below n/16 = 1 then Q4_K; attn_output Q4_K.
    assert [steps("Q3_K_M", f"model.layers.{i}.self_attn.v_proj", BLOCKS) for i in (0, 1, 2)] == [2, 2, 1]
    assert [steps("Q3_K_M", f"model.layers.{i}.mlp.down_proj", BLOCKS) for i in (0, 1)] == [2, 1]
    assert steps("Q3_K_M", "model.layers.5.self_attn.o_proj", BLOCKS) == 1
    assert steps("Q3_K_M", "lm_head", BLOCKS) == 3
    # Q4_K_M: Q6_K (two steps) where more_bits, the base elsewhere; Q5_K_M one step to Q6_K.
    assert [steps("Q4_K_M", f"model.layers.{i}.mlp.down_proj", BLOCKS) for i in (1, 2, 3, 4)] == [2, 0, 0, 2]
    assert steps("Q5_K_M", "model.layers.15.self_attn.v_proj", BLOCKS) == 1
    assert steps("Q4_K_M", "model.layers.4.self_attn.o_proj", BLOCKS) == 0
    assert steps("Q4_K_M", "model.layers.4.self_attn.q_proj", BLOCKS) == 0


def test_q4_k_m_mix_on_the_ladder():
    b = budget(8.0)
    policies = fixed_mix_choices(b, ["Q4_K_M"])
    # bases 3.5, 4.5 and 5.5 give distinct policies; base 6.5 is everything at the top, listed once
    assert len(policies) == 4
    by_base = {LADDER_BPW[b.bits(p[0])[0]]: p for p in policies}  # keyed by block 0's q_proj, always at the base
    bpw = {name: LADDER_BPW[b.bits(choice)[0]] for name, choice in zip(NAMES, by_base[4.5], strict=True)}
    bumped = {i for i in range(BLOCKS) if more_bits(i, BLOCKS)}  # {0, 1, 4, 7, 10, 13, 14, 15}
    assert bumped == {0, 1, 4, 7, 10, 13, 14, 15}
    for i in range(BLOCKS):
        assert bpw[f"model.layers.{i}.self_attn.q_proj"] == 4.5
        assert bpw[f"model.layers.{i}.self_attn.o_proj"] == 4.5
        assert bpw[f"model.layers.{i}.self_attn.v_proj"] == (6.5 if i in bumped else 4.5)
        assert bpw[f"model.layers.{i}.mlp.down_proj"] == (6.5 if i in bumped else 4.5)
    assert bpw["lm_head"] == 6.5


def test_policies_fit_the_budget_costliest_first():
    b = budget(4.4)
    policies = fixed_mix_choices(b)
    assert policies, "a 3.5 bpw base fits 4.4 bpw with its bumps"
    totals = [b.total(p) for p in policies]
    assert totals == sorted(totals, reverse=True)
    assert all(b.fits(p) for p in policies)
    assert len({tuple(p) for p in policies}) == len(policies)


def test_no_fitting_mix_is_a_user_error():
    # every layer at 3.5 bpw fits 3.5 bpw, but no mix does: each gives some layers more bits
    assert budget(3.5).fits([(ORDER.index(0), 0)] * len(NAMES))
    with pytest.raises(UserError, match="no fixed mix .* fits the budget"):
        fixed_mix_choices(budget(3.5))


def test_unknown_mix_is_refused():
    with pytest.raises(UserError, match="Q3_K_M"):
        build_searcher("fixed_mix", {"mixes": ["Q4_K_S"]})
