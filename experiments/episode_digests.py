"""SHA-256 digests of ``episodes.csv`` for seeded digits searches: the guard that a reshaping changes no result.

Each case runs ``mpq-rl search`` on the built-in digits workload (the default config) with seed 0, a few episodes
and one searcher, in a fresh folder, and hashes the run's ``episodes.csv`` byte for byte (the file has no wall-time
column, see :mod:`mpq_rl.runs.recorder`). ``python experiments/episode_digests.py --record`` writes the digests to
``experiments/episode_digests.json``; without ``--record`` it compares and exits 1 on a difference.
``tests/test_episode_digests.py`` runs the same comparison.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

DIGESTS_FILE = Path(__file__).with_name("episode_digests.json")
CASES: dict[str, dict[str, Any]] = {
    "ddpg": {"agent.name": "ddpg", "agent.episodes": 8, "agent.kwargs": {"warmup_episodes": 3, "batch_size": 16}},
    "ppo": {"agent.name": "ppo", "agent.episodes": 8},
    "ppo-2-envs": {"agent.name": "ppo", "agent.episodes": 6, "agent.n_envs": 2},
    "random": {"agent.name": "random", "agent.episodes": 12},
    "random-2-envs": {"agent.name": "random", "agent.episodes": 6, "agent.n_envs": 2},
    "greedy": {"agent.name": "greedy", "agent.episodes": 12},
    "hawq": {"agent.name": "hawq", "agent.episodes": 6, "agent.kwargs": {"samples": 2}},
}
"""Overrides of the default config per case (``--config`` omitted: digits, Bit Fusion latency at 0.5 of W8A8)."""
TESTED = ("ddpg", "ppo", "random", "greedy", "hawq")
"""The cases the test suite runs; the parallel ones (worker processes, ~20 s each) only run from this script."""
NOTE = (
    "SHA-256 of episodes.csv (whole file: it has no wall-clock column) for the digits default config, seed 0, "
    "torch 2.14.1; written by experiments/episode_digests.py --record, checked by tests/test_episode_digests.py"
)
SEED = 0


def episodes_digest(case: str, folder: Path) -> str:
    """Run ``case`` into ``folder`` and return the SHA-256 of its ``episodes.csv``."""
    import torch

    from mpq_rl.config import load_config
    from mpq_rl.runs.trainer import run_search

    torch.set_num_threads(1)
    config = load_config(None).with_overrides(seed=SEED, output=str(folder), **CASES[case])
    run_search(config, progress=False)
    return hashlib.sha256((folder / "episodes.csv").read_bytes()).hexdigest()


def digests(cases: list[str]) -> dict[str, str]:
    with tempfile.TemporaryDirectory() as scratch:
        return {case: episodes_digest(case, Path(scratch) / case) for case in cases}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", action="store_true", help="write the digests instead of comparing")
    parser.add_argument("cases", nargs="*", default=list(CASES), help="cases to run (default: all)")
    args = parser.parse_args(argv)
    found = digests(args.cases)
    if args.record:
        recorded = json.loads(DIGESTS_FILE.read_text()) if DIGESTS_FILE.is_file() else {}
        recorded["note"] = NOTE
        recorded["digests"] = {**recorded.get("digests", {}), **found}
        DIGESTS_FILE.write_text(json.dumps(recorded, indent=2, sort_keys=True) + "\n")
        print(f"wrote {DIGESTS_FILE}")
        return 0
    expected = json.loads(DIGESTS_FILE.read_text())["digests"]
    differ = [case for case in found if found[case] != expected.get(case)]
    for case in found:
        print(f"{case}: {'differs' if case in differ else 'same'} {found[case]}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
