"""The same seed gives byte-identical ``episodes.csv`` for ddpg, ppo, random, greedy and hawq on the digits default:
digests recorded before the issue-15 reshaping (``experiments/episode_digests.json``) hold after it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # experiments/ is not part of the installed package

from experiments.episode_digests import DIGESTS_FILE, TESTED, episodes_digest  # noqa: E402


@pytest.mark.parametrize("case", TESTED)
def test_episodes_match_the_recorded_digest(case, digits_model, one_thread, tmp_path):
    expected = json.loads(DIGESTS_FILE.read_text())["digests"][case]
    assert episodes_digest(case, tmp_path / case) == expected
