"""Where a run computes: the ``device`` key (``auto``, ``cpu``, ``cuda`` or ``cuda:N``), resolved once, at the edge.

The model, the calibration and test batches, the simulator's cached quantized weights and ranges, Hessian traces and
finetuning all live on the resolved device; the compiled CPU kernels (:mod:`mpq_rl.quantization.kernels`) run only on
the CPU and
PyTorch's own kernels elsewhere. Scores are computed on the CPU from the model's outputs either way.
"""

from __future__ import annotations

import torch

from mpq_rl.errors import UserError


def resolve_device(spec: str) -> torch.device:
    """The device ``spec`` names: ``auto`` is the first GPU when PyTorch sees one, else the CPU. A GPU that is not
    there is a :class:`UserError` saying what is available."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(
                f"device {spec!r}: PyTorch sees no CUDA GPU on this machine: use device: cpu "
                "(or auto, which takes a GPU only when there is one)"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise UserError(f"device {spec!r}: this machine has {count} CUDA GPU(s), numbered 0 to {count - 1}")
    return device
