"""Import user code named in a config as ``"pkg.module:attr"`` (model and data factories)."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from mpq_rl.errors import UserError


def import_object(spec: str, what: str) -> Any:
    """The object ``attr`` (dots allowed) of module ``pkg.module``; ``what`` names the config key in errors."""
    module_name, sep, attr = spec.partition(":") if isinstance(spec, str) else ("", "", "")
    if not sep or not module_name or not attr or ":" in attr:
        raise UserError(f"{what} must look like 'pkg.module:function', got {spec!r}")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(
            f"{what}: cannot import module {module_name!r} ({exc}): check the spelling and that the "
            "module is installed or on PYTHONPATH"
        ) from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UserError(f"{what}: module {module_name!r} has no attribute {attr!r}: check the name after ':'")
        obj = getattr(obj, part)
    return obj


def import_callable(spec: str, what: str) -> Callable[..., Any]:
    """Like :func:`import_object`, for a function or class to call."""
    obj = import_object(spec, what)
    if not callable(obj):
        raise UserError(f"{what}: {spec!r} is not a function or class to call (it is a {type(obj).__name__})")
    return obj


def call_with_kwargs(fn: Callable[..., Any], kwargs: Mapping[str, Any], what: str) -> Any:
    """Call ``fn(**kwargs)``, turning keyword arguments it does not accept into a :class:`UserError`."""
    try:
        inspect.signature(fn).bind(**kwargs)
    except TypeError as exc:
        raise UserError(f"{what}.kwargs do not fit {_name(fn)}: {exc}") from None
    except ValueError:
        pass  # no introspectable signature (some builtins): let the call itself decide
    return fn(**kwargs)


def _name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or type(fn).__name__
