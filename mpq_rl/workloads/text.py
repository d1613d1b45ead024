"""The ``text`` dataset: fixed calibration and held-out token sets cut from a plain-text file.

``data: {name: text, path: corpus.txt, calibration_tokens: 4096, test_tokens: 8192}`` tokenizes the file with the
model's own tokenizer (the model must be ``causal_lm`` or ``tinylm``) and cuts the tokens into sequences of
``sequence_length`` (``data.kwargs``; 128 by default). Sequence ``i`` is a test sequence when ``i % 10 == 9``, a
calibration sequence when ``i % 10 == 8`` and a training sequence otherwise (what ``tinylm`` trains on), so the
three sets are disjoint, spread over the whole text, and the same in every run; the first sequences of each set
give the requested number of tokens. Without ``path`` the text is the CPython documentation that ships with Python
(``pydoc_data.topics``, about 113,000 SmolLM2 tokens).

Items are ``{"input_ids": [L], "labels": [L - 1]}``: the labels are the next tokens, as indices into the model's
logits (:meth:`mpq_rl.workloads.causal_lm.CausalLM.output_index`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from mpq_rl.errors import UserError
from mpq_rl.workloads.data import Splits

SEQUENCE_LENGTH = 128
SPLIT_PERIOD = 10
"""Of every ten consecutive sequences, the last is held out for test and the one before for calibration."""
SPLIT_OF_REMAINDER = {SPLIT_PERIOD - 1: "test", SPLIT_PERIOD - 2: "calibration"}


def corpus_text(path: str | Path | None = None) -> str:
    """The text of ``path`` (UTF-8), or the CPython documentation topics when ``path`` is None."""
    if path is None:
        import pydoc_data.topics

        topics = pydoc_data.topics.topics
        return "\n\n".join(topics[key] for key in sorted(topics))
    path = Path(path)
    if not path.is_file():
        raise UserError(f"data.path {str(path)!r} is not a file: give a plain-text (UTF-8) file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"data.path {str(path)!r} is not UTF-8 text: save it as UTF-8") from None


def tokenize(tokenizer: object, text: str) -> torch.Tensor:
    """The token ids of ``text`` (no special tokens added), int64."""
    return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.int64)


def token_sequences(ids: torch.Tensor, sequence_length: int = SEQUENCE_LENGTH) -> dict[str, torch.Tensor]:
    """``ids`` cut into sequences of ``sequence_length`` (the tail dropped) and split into train, calibration and
    test ``[N, L]`` tensors by the sequence's position (see the module docstring)."""
    if sequence_length < 2:
        raise UserError(f"data.kwargs.sequence_length must be at least 2 tokens, got {sequence_length}")
    count = len(ids) // sequence_length
    sequences = ids[: count * sequence_length].reshape(count, sequence_length)
    remainder = torch.arange(count) % SPLIT_PERIOD
    splits = {"train": sequences[remainder < SPLIT_PERIOD - 2]}
    for rest, name in SPLIT_OF_REMAINDER.items():
        splits[name] = sequences[remainder == rest]
    return splits


class TokenSequences(Dataset):
    """Token sequences as ``{"input_ids", "labels"}`` items; ``labels`` are ``output_index`` of the next tokens."""

    def __init__(self, sequences: torch.Tensor, labels: torch.Tensor) -> None:
        self.sequences = sequences
        self.labels = labels

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.sequences[index], "labels": self.labels[index]}


def _first_tokens(sequences: torch.Tensor, tokens: int, key: str) -> torch.Tensor:
    needed = -(-tokens // sequences.shape[1])
    if tokens < 1 or needed > len(sequences):
        raise UserError(
            f"data.{key} must be between 1 and {len(sequences) * sequences.shape[1]} (the text's {key.split('_')[0]} "
            f"tokens), got {tokens}: lower it or give a longer text"
        )
    return sequences[:needed]


def load_text(
    model: nn.Module,
    path: str | Path | None = None,
    calibration_tokens: int = 4096,
    test_tokens: int = 8192,
    sequence_length: int = SEQUENCE_LENGTH,
) -> Splits:
    """Calibration and test token sequences of the text at ``path`` (see the module docstring), tokenized by
    ``model``'s tokenizer."""
    from mpq_rl.workloads.causal_lm import CausalLM

    if not isinstance(model, CausalLM):
        raise UserError(f"data.name text needs a language model (causal_lm or tinylm), got {type(model).__name__}")
    sequences = token_sequences(tokenize(model.tokenizer, corpus_text(path)), sequence_length)
    splits: Splits = {}
    for name, tokens in (("calibration", calibration_tokens), ("test", test_tokens)):
        chosen = _first_tokens(sequences[name], tokens, f"{name}_tokens")
        splits[name] = TokenSequences(chosen, model.output_index(chosen[:, 1:]))
    return splits
