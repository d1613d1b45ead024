"""Who may write a folder: the manifest that marks a run folder as mpq_rl's, and the lock that keeps it to one process.

``mpq_rl_run.json`` (format and version) marks a run folder; a new search writes only into a folder that does not
exist, is empty or holds that manifest, so a folder of someone else's files is never touched. The manifest also
holds the run's parts (:class:`RunParts`: the first search and each resume, with their wall time and evaluations),
so totals survive an interruption. While a search runs
it holds an exclusive ``flock`` on ``mpq_rl.lock`` in its folder: a second search, resume or comparison on the
same run is refused at once. The operating system releases the lock when the process ends, however it ends; the
lock file stays behind and means nothing while no process holds it.
"""

from __future__ import annotations

import fcntl
import os
import platform
import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mpq_rl.config import RunConfig, load_config
from mpq_rl.errors import UserError
from mpq_rl.io import atomic_write_json, atomic_write_text, read_json

CONFIG_FILE = "config.yaml"
"""The run's resolved config (written by :func:`write_config`), after a first line of
:data:`CONFIG_HEADER`."""
CONFIG_HEADER = "# mpq_rl run configuration"
MANIFEST_FILE = "mpq_rl_run.json"
LOCK_FILE = "mpq_rl.lock"
FORMAT = "mpq_rl.run/1"
RESUMABLE_CHANGES = ("agent.episodes", "parallel.backend", "parallel.workers", "parallel.address")
"""What a resumed run may change in the saved config (where evaluations run does not change what they give)."""


def is_run_folder(folder: Path) -> bool:
    """Whether ``folder`` holds an mpq_rl run manifest (a user error if it holds a file of that name that is not)."""
    path = Path(folder) / MANIFEST_FILE
    if not path.is_file():
        return False
    data = read_json(path, fix="this is not an mpq_rl run folder; pick another --output folder")
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UserError(f"{path} is not an mpq_rl run manifest ({FORMAT}): pick another --output folder")
    return True


def holds_run(folder: Path) -> bool:
    """Whether ``folder`` holds a search's run: its manifest, or (a run of an mpq_rl from before manifests) a
    config.yaml that a search wrote."""
    config = Path(folder) / CONFIG_FILE
    if is_run_folder(folder):
        return config.is_file()
    try:
        with config.open(encoding="utf-8") as handle:
            return handle.readline().startswith(CONFIG_HEADER)
    except (OSError, UnicodeDecodeError):
        return False


def run_config(folder: str | Path) -> RunConfig:
    """The config of the run in ``folder`` (a user error if ``folder`` is not a run folder)."""
    folder = Path(folder)
    if not (folder / CONFIG_FILE).is_file():
        raise UserError(f"{folder} is not a run folder (no {CONFIG_FILE}): pass the --output folder of a search")
    config = load_config(folder / CONFIG_FILE)
    return config.with_overrides(output=str(folder))


def check_new_run_folder(folder: Path) -> None:
    """Refuse, before anything is written, a ``--output`` that a new run may not write into: a file, or a folder
    that holds files (besides a lock) and is not a run folder."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--output {folder} is a file, not a folder: pick a folder path")
    try:
        empty = not folder.is_dir() or all(path.name == LOCK_FILE for path in folder.iterdir())
    except OSError as exc:
        raise UserError(f"--output {folder} cannot be read ({exc.strerror}): pick a folder you can write to") from None
    if not empty and not is_run_folder(folder):
        raise UserError(
            f"{folder} holds files and is not an mpq_rl run folder (no {MANIFEST_FILE}): pick a new or empty --output "
            "folder (nothing was changed)"
        )


def write_manifest(folder: Path, parts: list[dict[str, Any]] | None = None) -> None:
    """Mark ``folder`` as a run folder (with the run's ``parts`` so far)."""
    from mpq_rl import __version__

    atomic_write_json(Path(folder) / MANIFEST_FILE, {"format": FORMAT, "mpq_rl": __version__, "parts": parts or []})


class RunParts:
    """The parts of one run: the first search and each resume, each with the episode it started after, the
    episodes of the interrupted part that it redoes, its wall time and its evaluations, kept in the manifest (and
    brought up to date at every save) so that a run's totals count every part, however the last one ended."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        manifest = read_json(self.folder / MANIFEST_FILE, fix="delete it to start the run's history afresh")
        parts = manifest.get("parts", []) if isinstance(manifest, dict) else []
        valid = isinstance(parts, list) and all(isinstance(p, dict) for p in parts)
        self.parts: list[dict[str, Any]] = parts if valid else []

    def start(self, after_episode: int, redone: int) -> None:
        """Begin a part that continues after episode ``after_episode``, redoing ``redone`` episodes."""
        started = datetime.now(UTC).isoformat(timespec="seconds")
        self.parts.append(
            {
                "started": started,
                "after_episode": after_episode,
                "redone": redone,
                "wall_seconds": 0.0,
                "evaluations": 0,
            }
        )
        write_manifest(self.folder, self.parts)

    def update(self, wall_seconds: float, evaluations: int | None = None) -> None:
        """Record the current part's wall time (and its evaluations, when given) so far."""
        self.parts[-1]["wall_seconds"] = round(wall_seconds, 3)
        if evaluations is not None:
            self.parts[-1]["evaluations"] = evaluations
        write_manifest(self.folder, self.parts)

    def total(self, key: str) -> float:
        """The sum of ``key`` (``wall_seconds`` or ``evaluations``) over every part."""
        return sum(float(part.get(key, 0) or 0) for part in self.parts)


@contextmanager
def exclusive(folder: Path) -> Iterator[None]:
    """Hold the lock of ``folder`` (created if needed) for the ``with`` block; a user error if another process
    holds it."""
    folder = Path(folder)
    path = folder / LOCK_FILE
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise UserError(f"cannot write to {folder} ({exc.strerror}): pick a folder you can write to") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            raise UserError(
                f"{folder} is in use by another mpq-rl process (pid {holder or '?'}): wait until it ends, "
                "or pick another folder"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        yield
    finally:
        os.close(fd)


def versions() -> dict[str, str]:
    """The versions a run depends on, for its config.yaml and summary.json."""
    from importlib.metadata import version

    import gymnasium
    import numpy
    import torch

    import mpq_rl

    return {
        "mpq_rl": mpq_rl.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "stable_baselines3": version("stable-baselines3"),  # its metadata: a baseline run never imports it
        "gymnasium": gymnasium.__version__,
        "numpy": numpy.__version__,
    }


def write_config(folder: Path, config: RunConfig) -> None:
    """``config.yaml``: the resolved config, preceded by comments naming the versions and the command."""
    header = [f"{CONFIG_HEADER} (resolved); load it with `mpq-rl search --config` or resume the run"]
    header += [f"# {name} {version}" for name, version in versions().items()]
    header.append("# command: " + shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]))
    atomic_write_text(folder / CONFIG_FILE, "\n".join(header) + "\n" + config.to_yaml())


def resumed_config(saved: RunConfig, asked: RunConfig) -> RunConfig:
    """The saved config of a run being resumed, with what ``asked`` may change in it (:data:`RESUMABLE_CHANGES`);
    any other difference is a user error naming the key."""
    keep = saved.model_dump(mode="json")
    want = asked.model_dump(mode="json")
    for section, values in keep.items():
        if section == "output":
            continue
        if isinstance(values, dict):
            for key, value in values.items():
                dotted = f"{section}.{key}"
                if dotted not in RESUMABLE_CHANGES and want[section][key] != value:
                    raise UserError(
                        f"cannot resume with {dotted} = {want[section][key]!r}: the run used {value!r}; "
                        f"only {', '.join(RESUMABLE_CHANGES)} may change"
                    )
        elif want[section] != values:
            raise UserError(f"cannot resume with {section} = {want[section]!r}: the run used {values!r}")
    return saved.with_overrides(**{k: _get(asked, k) for k in RESUMABLE_CHANGES})


def _get(config: RunConfig, dotted: str) -> Any:
    node: Any = config
    for key in dotted.split("."):
        node = getattr(node, key)
    return node
