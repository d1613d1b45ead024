"""The files of a finetuned policy (``evaluate --finetune-epochs --output DIR``): the float state dict in
``model.safetensors`` and the learned LSQ step sizes in ``lsq_scales.safetensors``, written and loaded without
pickle."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save
from torch import nn

from mpq_rl.errors import UserError
from mpq_rl.io import atomic_write_bytes
from mpq_rl.quantization.qat import LayerScales, load_scales, save_scales

WEIGHTS_FILE = "model.safetensors"
SCALES_FILE = "lsq_scales.safetensors"


def save_finetuned(folder: Path, state_dict: Mapping[str, torch.Tensor], scales: Mapping[str, LayerScales]) -> None:
    """Write the finetuned weights and learned scales into ``folder``."""
    tensors = {k: v.detach().contiguous() for k, v in state_dict.items()}
    atomic_write_bytes(folder / WEIGHTS_FILE, save(tensors, metadata={"format": "pt"}))
    save_scales(folder / SCALES_FILE, scales)


def load_finetuned(model: nn.Module, path: str | Path) -> dict[str, LayerScales] | None:
    """Load finetuned weights into ``model``; return the learned scales saved beside them (None if there are none).

    ``path`` is an ``evaluate --finetune-epochs`` output folder, its ``model.safetensors``, or a plain state dict
    saved with ``torch.save(model.state_dict(), path)``.
    """
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS_FILE
    if not path.is_file():
        raise UserError(f"weights file {str(path)!r} does not exist: pass an evaluate --output folder or its weights")
    if path.suffix == ".safetensors":
        try:
            state = load_file(str(path))
        except Exception as exc:
            raise UserError(f"weights {str(path)!r} cannot be read as safetensors ({type(exc).__name__})") from None
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[-1].strip()
            raise UserError(f"weights {str(path)!r} do not fit the model: {first}") from None
    else:
        from mpq_rl.workloads.models import load_weights

        load_weights(model, path)
    scales = path.parent / SCALES_FILE
    return load_scales(scales) if scales.is_file() else None


def learned_scales(
    model: nn.Module, path: str | Path, policy: Mapping[str, tuple[int, int]]
) -> dict[str, LayerScales] | None:
    """Load the weights at ``path`` into ``model`` (:func:`load_finetuned`); return the learned scales saved beside
    them for ``policy``'s layers, or None if there are none (the ranges are then calibrated as the simulator does).
    Scales learned for other bits than the policy gives are a UserError."""
    learned = load_finetuned(model, path)
    if learned is None:
        return None
    for name, bits in policy.items():
        have = (learned[name].w_bits, learned[name].a_bits) if name in learned else None
        if have != tuple(bits):
            raise UserError(
                f"layer {name!r}: the learned scales next to {str(path)!r} are for bits {have}, the policy gives "
                f"{tuple(bits)}: use the policy the weights were finetuned with"
            )
    return {name: learned[name] for name in policy}
