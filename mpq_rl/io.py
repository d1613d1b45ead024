"""Run-folder files: atomic writes with the user's permissions, and JSON read back as a one-line user error.

A write goes through a temporary file in the same folder and an atomic rename, so an interrupted run never leaves
a half-written result behind; the file gets the permissions ``open`` would give it (``0o666`` less the umask),
not the ``0o600`` of the temporary file.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from mpq_rl.errors import UserError


def _file_mode() -> int:
    """``0o666`` less the process's umask: the mode ``open(path, "w")`` creates files with."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _file_mode())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_output_file(path: Path, flag: str) -> None:
    """Refuse, before any work, an output file path that is a folder or lies in a file (one line, the fix)."""
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder: give the path of the file to write, e.g. {path / 'model.onnx'}")
    parent = next((p for p in path.parents if p.exists()), Path("."))
    if not parent.is_dir():
        raise UserError(f"{flag} {path}: {parent} is a file, not a folder; pick another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: {parent} is not writable; pick a folder you can write to")


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def json_text(data: Any) -> str:
    """``data`` as indented JSON; a NaN or infinite number becomes ``null`` (JSON has no such numbers)."""
    return json.dumps(_null_for_non_finite(data), indent=2, sort_keys=False, allow_nan=False)


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json_text(data) + "\n")


def _null_for_non_finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _null_for_non_finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_null_for_non_finite(item) for item in value]
    return value


READ_LIMIT = 256 * 2**20
"""The most bytes mpq-rl reads from one JSON file of a run folder (an evaluation cache of a long run is a few MB)."""
NUMBER_DIGITS = 40
"""The most digits of an integer in a file mpq-rl reads (Python refuses over 4,300, with a traceback)."""


def short(text: str, length: int = 40) -> str:
    """``text`` for an error message: at most ``length`` characters of it, then how many more there were."""
    return text if len(text) <= length else f"{text[:length]}... ({len(text) - length:,} more characters)"


def read_json(path: str | Path, fix: str, strict: bool = False, limit: int = READ_LIMIT) -> Any:
    """The JSON value in ``path``; a :class:`UserError` naming the file, what is wrong and ``fix`` (how to repair
    it) if the file cannot be read, is not a regular file (:mod:`mpq_rl.safe_files`), holds more than ``limit``
    bytes, is not UTF-8 or is not JSON, nests too deeply or has an integer of more than :data:`NUMBER_DIGITS`
    digits. ``strict`` also refuses what Python's reader lets through but JSON does not allow: ``NaN``/``Infinity``
    and a key given twice in one object."""
    from mpq_rl.safe_files import read_bytes

    hooks: dict[str, Any] = {"parse_int": _bounded_int}
    if strict:
        hooks.update(parse_constant=_no_constant, object_pairs_hook=_unique_keys)
    try:
        return json.loads(read_bytes(path, limit).decode("utf-8"), **hooks)
    except OSError as exc:
        reason = f"cannot be read ({exc.strerror})"
    except UnicodeDecodeError:
        reason = "is not UTF-8 text"
    except json.JSONDecodeError as exc:
        reason = f"is not valid JSON ({exc.msg} at line {exc.lineno})"
    except RecursionError:
        reason = "is nested too deeply"
    except _NotJson as exc:
        reason = f"is not valid JSON ({exc})"
    raise UserError(f"{path} {reason}: {fix}")


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > NUMBER_DIGITS:
        raise _NotJson(f"an integer of {len(text):,} digits, more than {NUMBER_DIGITS}")
    return int(text)


class _NotJson(ValueError):
    """What Python's JSON reader accepts but the JSON standard does not."""


def _no_constant(name: str) -> Any:
    raise _NotJson(f"{name} is not a JSON number")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _NotJson(f"key {short(repr(key))} is given twice in one object")
        result[key] = value
    return result
