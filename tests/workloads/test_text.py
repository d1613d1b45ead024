"""Text data: the corpus, its fixed token splits, and clear errors for bad input."""

from __future__ import annotations

import pytest
import torch

from mpq_rl.config import load_config
from mpq_rl.errors import UserError
from mpq_rl.workloads.text import corpus_text, load_text, token_sequences


def test_the_default_corpus_is_the_cpython_documentation():
    text = corpus_text()
    assert len(text) > 100_000 and "while" in text


def test_a_corpus_file_must_exist_and_be_utf8(tmp_path):
    with pytest.raises(UserError, match="is not a file"):
        corpus_text(tmp_path / "missing.txt")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8"):
        corpus_text(bad)
    good = tmp_path / "corpus.txt"
    good.write_text("hello world\n", encoding="utf-8")
    assert corpus_text(good) == "hello world\n"


def test_text_data_needs_a_language_model():
    with pytest.raises(UserError, match="needs a language model"):
        load_text(torch.nn.Linear(2, 2))


def test_short_sequences_are_refused():
    with pytest.raises(UserError, match="at least 2 tokens"):
        token_sequences(torch.arange(100), 1)


def test_token_keys_are_validated_at_the_edge():
    config = load_config({"data": {"name": "text", "calibration_tokens": 2048, "test_tokens": 512}})
    assert config.data.file_kwargs == {"calibration_tokens": 2048, "test_tokens": 512}
    with pytest.raises(UserError, match="calibration_tokens"):
        load_config({"data": {"name": "text", "calibration_tokens": 0}})
    with pytest.raises(UserError, match="budget.bpw or budget.bytes"):
        load_config({"budget": {"bpw": 3.0, "bytes": 1000}})
    with pytest.raises(UserError, match="activation_bits: \\[\\]"):
        load_config({"quantization": {"weight_formats": ["q4_0"]}})
    with pytest.raises(UserError, match="weight_formats"):
        load_config({"quantization": {"activation_bits": [], "weight_formats": ["q4_k"]}})
