"""One-line status messages on stderr: what a command is doing now (loading, training, calibrating, costing).

The ``mpq-rl`` command turns them on (:func:`enable`); a library caller, a test or a worker process that rebuilds a
problem stays quiet unless it turns them on too.
"""

from __future__ import annotations

import sys

_enabled = False


def enable(on: bool = True) -> None:
    """Print status lines from now on (``on=False``: stop)."""
    global _enabled
    _enabled = on


def say(message: str) -> None:
    """Print ``mpq-rl: <message>`` on stderr at once, when status lines are on."""
    if _enabled:
        print(f"mpq-rl: {message}", file=sys.stderr, flush=True)
