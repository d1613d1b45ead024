"""Model input and output: how a batch is fed to a model, how big it is, and which tensor its output stands for.

Every stage that runs a model (layer discovery, the simulator, the evaluator, fine-tuning, export) goes through
these, so a model taking a dict of tokenized text or returning a Hugging Face output object works everywhere.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mpq_rl.errors import UserError
from mpq_rl.workloads.data import Batches


def batch_size_of(inputs: Any) -> int:
    """The leading dimension of a batch (a tensor, or the first tensor of a dict/tuple)."""
    if isinstance(inputs, torch.Tensor):
        return int(inputs.shape[0])
    if isinstance(inputs, dict):
        return batch_size_of(next(iter(inputs.values())))
    if isinstance(inputs, (tuple, list)):
        return batch_size_of(inputs[0])
    raise UserError(f"cannot find the batch size of a model input of type {type(inputs).__name__}")


def call_model(model: nn.Module, inputs: Any) -> Any:
    """Run ``model`` on a batch: keyword arguments for dicts (tokenized text), positional otherwise."""
    if isinstance(inputs, dict):
        return model(**inputs)
    return model(inputs)


def first_samples(inputs: Any, n: int) -> Any:
    """The first ``n`` samples of a batch (a tensor, or a dict/tuple/list of them)."""
    if isinstance(inputs, torch.Tensor):
        return inputs[:n]
    if isinstance(inputs, dict):
        return {key: first_samples(value, n) for key, value in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(first_samples(value, n) for value in inputs)
    return inputs


def output_tensor(output: Any) -> torch.Tensor:
    """The tensor a model's output stands for: itself, ``logits``/``last_hidden_state``, or a tuple's first."""
    if isinstance(output, torch.Tensor):
        return output
    for key in ("logits", "last_hidden_state"):
        value = getattr(output, key, None)
        if isinstance(value, torch.Tensor):
            return value
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise UserError(f"cannot score a model output of type {type(output).__name__}: return a tensor of logits")


@torch.no_grad()
def model_outputs(model: nn.Module, batches: Batches) -> torch.Tensor:
    """The model's outputs over every batch, concatenated along the batch dimension (as float32)."""
    was_training = model.training
    # Switching modes walks every module (a cost per call on a big model); skip it when all are in eval mode.
    switch = any(module.training for module in model.modules())
    if switch:
        model.eval()
    try:
        return torch.cat([output_tensor(call_model(model, inputs)).float() for inputs, _ in batches])
    finally:
        if switch:
            model.train(was_training)
