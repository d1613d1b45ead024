"""Policies: a mapping from layer name to its (weight bits, activation bits), stored as versioned JSON.

Bits are precision codes (:mod:`mpq_rl.quantization.formats`): plain bit-widths for integers. A file gives a layer's
non-integer formats as ``w_format`` / ``a_format``; a file without them (every ``mpq_rl.policy/1`` file written
before formats existed) means integers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mpq_rl.errors import UserError
from mpq_rl.io import atomic_write_json, read_json
from mpq_rl.quantization.formats import (
    FORMAT_CODE_STRIDE,
    FORMAT_NAMES,
    bits_of,
    candidate_codes,
    check_code,
    format_of,
    is_integer_code,
    label,
    precision_code,
)

if TYPE_CHECKING:
    from mpq_rl.quantization.settings import QuantizationConfig

BitPair = tuple[int, int]
Policy = dict[str, BitPair]
POLICY_FORMAT = "mpq_rl.policy/1"


def validate_policy(
    policy: Mapping[str, Sequence[int]],
    names: Sequence[str],
    weight_bits: Sequence[int] | None = None,
    activation_bits: Sequence[int] | None = None,
) -> Policy:
    """Check that ``policy`` gives allowed bits to exactly the layers ``names``; return it normalized."""
    known = set(names)
    for name in policy:
        if name not in known:
            raise UserError(f"policy names layer {name!r}, which the model does not have")
    result: Policy = {}
    for name in names:
        if name not in policy:
            raise UserError(f"policy has no bits for layer {name!r}: give every quantizable layer a [w, a] pair")
        bits = tuple(int(b) for b in policy[name])
        if len(bits) != 2:
            raise UserError(f"policy bits for layer {name!r} must be a [w_bits, a_bits] pair, got {list(bits)}")
        w, a = bits
        if weight_bits is not None and w not in weight_bits:
            raise UserError(
                f"layer {name!r}: weight bits {label(w)} are not among the candidates {_labels(weight_bits)}"
            )
        if activation_bits is not None and a not in activation_bits:
            raise UserError(
                f"layer {name!r}: activation bits {label(a)} are not among the candidates {_labels(activation_bits)}"
            )
        result[name] = (w, a)
    return result


def _labels(codes: Sequence[int]) -> str:
    return "[" + ", ".join(label(c) for c in codes) + "]"


def policy_to_json(policy: Mapping[str, BitPair], **sections: Any) -> dict[str, Any]:
    """The file form: ``{"format", "layers": [{"name", "w_bits", "a_bits"}...], **sections}``, with
    ``w_format`` and ``a_format`` on every layer when any layer uses a format other than integers."""
    with_formats = not all(is_integer_code(w) and is_integer_code(a) for w, a in policy.values())
    layers = []
    for n, (w, a) in policy.items():
        layer: dict[str, Any] = {"name": n, "w_bits": bits_of(w), "a_bits": bits_of(a)}
        if with_formats:
            layer |= {"w_format": format_of(w), "a_format": format_of(a)}
        layers.append(layer)
    return {"format": POLICY_FORMAT, "layers": layers, **sections}


def save_policy(path: str | Path, policy: Mapping[str, BitPair], **sections: Any) -> None:
    atomic_write_json(path, policy_to_json(policy, **sections))


def load_policy(path: str | Path) -> Policy:
    """Read a policy file (unvalidated against a model: see :func:`validate_policy`).

    The file must be UTF-8 JSON in the format :func:`save_policy` writes: each layer named once, its bits whole
    numbers. Anything else is a one-line :class:`UserError` naming the file.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"policy file {str(path)!r} is a folder: give the path of a policy.json (or --run {path})")
    if not path.is_file():
        raise UserError(f"policy file {str(path)!r} does not exist")
    data = read_json(path, f'give a policy file in the format "{POLICY_FORMAT}"', strict=True)
    if not isinstance(data, dict) or data.get("format") != POLICY_FORMAT:
        raise UserError(f'policy file {path}: expected "format": "{POLICY_FORMAT}"')
    layers = data.get("layers")
    if not isinstance(layers, list):
        raise UserError(f'policy file {path}: expected a list of layers under "layers"')
    policy: Policy = {}
    for item in layers:
        if not isinstance(item, dict) or not all(key in item for key in ("name", "w_bits", "a_bits")):
            raise UserError(f"policy file {path}: each layer needs name, w_bits and a_bits")
        name = item["name"]
        if not isinstance(name, str):
            raise UserError(f"policy file {path}: layer names must be strings, got {name!r}")
        if name in policy:
            raise UserError(f"policy file {path}: layer {name!r} is listed twice: keep one entry per layer")
        policy[name] = (_code(item, "w", name, path), _code(item, "a", name, path))
    return policy


def _code(item: dict[str, Any], side: str, name: str, path: Path) -> int:
    """The precision code of one side (``w`` or ``a``) of a policy file's layer entry."""
    bits = _whole(item[f"{side}_bits"], name, f"{side}_bits", path)
    format_name = item.get(f"{side}_format", "int")
    if format_name not in FORMAT_NAMES:
        raise UserError(
            f"policy file {path}: layer {name!r} has {side}_format {format_name!r}: choose one of {list(FORMAT_NAMES)}"
        )
    if not 0 < bits < FORMAT_CODE_STRIDE:
        raise UserError(f"policy file {path}: layer {name!r} has {side}_bits {bits}: bit-widths run from 2 to 32")
    code = precision_code(format_name, bits)
    check_code(code, f"policy file {path}: layer {name!r}")
    return code


def _whole(value: Any, name: str, key: str, path: Path) -> int:
    """A bit-width from a policy file: an integer (``4`` or ``4.0``), never a fraction, a string or a boolean."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    raise UserError(f"policy file {path}: layer {name!r} has {key} {value!r}: bit-widths are whole numbers like 4")


def checked_policy(
    path: str | Path, layers: Sequence[str], fixed: Mapping[str, BitPair], quantization: QuantizationConfig
) -> Policy:
    """Load a policy file and check it against the workload: every layer, no unknown layer, allowed bits.

    ``layers`` are the workload's layer names; allowed bits are the configured candidates plus the bits the
    configuration fixes for unsearched layers (``fixed``).
    """
    weight_bits = sorted(
        {*candidate_codes(quantization.formats, quantization.weight_bits), *(w for w, _ in fixed.values())}
    )
    activation_bits = sorted(
        {
            *candidate_codes(quantization.formats, quantization.activation_candidates),
            *(a for _, a in fixed.values()),
        }
    )
    return validate_policy(load_policy(path), layers, weight_bits, activation_bits)
