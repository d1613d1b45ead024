"""Build the network a run quantizes: a built-in model or a user factory, optionally with saved weights."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mpq_rl.errors import UserError
from mpq_rl.imports import call_with_kwargs, import_callable
from mpq_rl.workloads import MODELS
from mpq_rl.workloads.settings import ModelConfig


def build_model(config: ModelConfig) -> nn.Module:
    """The model ``config`` names, called with ``config.kwargs``, weights loaded if given, in eval mode."""
    if config.factory is not None:
        fn = import_callable(config.factory, "model.factory")
        source = f"model.factory {config.factory!r}"
    else:
        fn = MODELS.resolve(config.name)
        source = f"model {config.name!r}"
    model = call_with_kwargs(fn, config.kwargs, "model")
    if not isinstance(model, nn.Module):
        raise UserError(f"{source} must return a torch.nn.Module, got {type(model).__name__}")
    if config.weights is not None:
        load_weights(model, config.weights)
    check_finite_weights(model, source if config.weights is None else f"model.weights {str(config.weights)!r}")
    return model.eval()


def check_finite_weights(model: nn.Module, source: str) -> None:
    """Refuse a model with a NaN or infinite parameter or buffer: every score of it would be meaningless."""
    for name, tensor in (*model.named_parameters(), *model.named_buffers()):
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise UserError(
                f"{source}: {name!r} holds NaN or infinite values: give weights of a trained model (finite numbers)"
            )


def load_weights(model: nn.Module, path: Path) -> None:
    """Load a state dict saved with ``torch.save(model.state_dict(), path)`` into ``model``, strictly."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(
            f"model.weights {str(path)!r} cannot be read as a state dict ({type(exc).__name__}): "
            "save it with torch.save(model.state_dict(), path)"
        ) from None
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise UserError(
            f"model.weights {str(path)!r} holds a {type(state).__name__}, not a state dict: "
            "save it with torch.save(model.state_dict(), path)"
        )
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise UserError(
            f"model.weights {str(path)!r} does not fit the model: "
            f"missing keys {_first(missing)}, unexpected keys {_first(unexpected)}"
        )
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise UserError(
                f"model.weights {str(path)!r}: {key!r} is a {type(value).__name__}, not a tensor: "
                "save it with torch.save(model.state_dict(), path)"
            )
        if value.shape != expected[key].shape:
            raise UserError(
                f"model.weights {str(path)!r} does not fit the model: {key!r} has shape "
                f"{list(value.shape)} in the file but {list(expected[key].shape)} in the model"
            )
    model.load_state_dict(state)


def _first(keys: list[Any], limit: int = 3) -> str:
    if not keys:
        return "none"
    shown = ", ".join(repr(k) for k in keys[:limit])
    return f"[{shown}{', ...' if len(keys) > limit else ''}] ({len(keys)} in all)"
