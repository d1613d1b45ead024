"""The progress lines of the commands that train (``evaluate --finetune-epochs``, ``adapt``): one line on stderr
per epoch, prefixed with the command, with the seconds since training started."""

from __future__ import annotations

import sys
import time


def progress_line(command: str, text: str, started: float | None = None) -> None:
    """Print ``<command>: <text>[, <seconds> s]`` on stderr at once (``started``: a ``time.monotonic()`` value)."""
    elapsed = "" if started is None else f", {time.monotonic() - started:.0f} s"
    print(f"{command}: {text}{elapsed}", file=sys.stderr, flush=True)
