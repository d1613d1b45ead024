"""A run folder holds only its own regular files and folders: opening, checking and removing them safely.

Run folders get copied between machines and colleagues, so one may hold a symbolic link (``mpq_rl.lock ->
~/notes.txt``, ``checkpoint/ -> another run``), a FIFO or a device where the run wrote a file. Followed, such an
entry would make a run write, truncate or delete outside its folder, read another run's files as its own, or hang
(a FIFO) or fill memory (``/dev/zero``). Here every file of a run folder is opened with ``O_NOFOLLOW`` (and
``O_NONBLOCK``, so a FIFO cannot block the open) and checked to be a regular file once open; a folder is checked
with ``lstat`` before it is used; anything else is refused in one line naming it, before anything is written.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from pathlib import Path

from mpq_rl.errors import UserError

_KINDS = {
    stat.S_IFLNK: "symbolic link",
    stat.S_IFIFO: "FIFO",
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
    stat.S_IFSOCK: "socket",
}


def _refusal(path: Path, mode: int) -> UserError:
    kind = _KINDS.get(stat.S_IFMT(mode), "special file")
    return UserError(
        f"{path} is a {kind}, not a regular file or folder: a run folder holds only its own files, so mpq-rl never "
        "follows or opens it; remove it (nothing was changed)"
    )


def check_tree(folder: str | Path) -> None:
    """Refuse ``folder`` (if it exists) when it, or anything in it, is not a regular file or folder."""
    folder = Path(folder)
    try:
        mode = folder.lstat().st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise UserError(f"{folder} cannot be read ({exc.strerror}): pick a folder you can read") from None
    if stat.S_ISLNK(mode):
        raise _refusal(folder, mode)
    if not stat.S_ISDIR(mode):
        return  # a file where a folder is expected: the callers say so in their own words
    pending = [folder]
    while pending:
        try:
            entries = list(os.scandir(pending.pop()))
        except OSError as exc:
            raise UserError(f"{folder} cannot be read ({exc.strerror}): pick a folder you can read") from None
        for entry in entries:
            mode = entry.stat(follow_symlinks=False).st_mode
            if stat.S_ISDIR(mode):
                pending.append(Path(entry.path))
            elif not stat.S_ISREG(mode):
                raise _refusal(Path(entry.path), mode)


def open_regular(path: str | Path, flags: int = os.O_RDONLY, mode: int = 0o666) -> int:
    """A descriptor of the regular file ``path``, opened without following a link or blocking on a FIFO (``flags``
    as for :func:`os.open`); a :class:`UserError` naming it if it is anything else. The caller closes it."""
    path = Path(path)
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # the last component is a symbolic link
            raise _refusal(path, stat.S_IFLNK) from None
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise _refusal(path, info.st_mode)
    return fd


def read_bytes(path: str | Path, limit: int) -> bytes:
    """The bytes of the regular file ``path``; a :class:`UserError` if it holds more than ``limit`` bytes."""
    fd = open_regular(path)
    with os.fdopen(fd, "rb") as handle:
        size = os.fstat(fd).st_size
        data = handle.read(limit + 1) if size <= limit else b""
    if size > limit or len(data) > limit:
        raise UserError(f"{path} holds {max(size, len(data)):,} bytes, more than the {limit:,} mpq-rl reads from it")
    return data


def remove(path: str | Path) -> None:
    """Remove ``path`` if it exists: a file or link itself (never a link's target), a folder with what it holds
    (links inside removed, not followed)."""
    path = Path(path)
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode):
        shutil.rmtree(path)  # removes links inside a folder, never what they point at
    else:
        path.unlink(missing_ok=True)
