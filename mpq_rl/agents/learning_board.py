"""What the model-based searcher (``mbppo``) shows of its own learning in the run's TensorBoard folder.

Tags (step = evaluations so far, like every chart of the run):

- ``mbppo/surrogate/rank_correlation`` and ``mbppo/surrogate/abs_error``: how well the surrogate predicted the
  proxy of the policies it sent to evaluation, before it was refitted on them (Spearman's rank correlation and
  mean absolute error over the last :data:`FIT_WINDOW` of them);
- ``mbppo/surrogate/fit`` (image): every such prediction against its measurement, coloured by round;
- ``mbppo/proposals/<source>``: how many of a round's evaluations came from the agent's samples, the surrogate's
  Lagrangian optima (``relaxation``), the incumbents' one-layer ``neighbours``, ``random`` exploration and the
  per-layer ``probes``;
- ``train/*``: PPO's losses, averaged over the updates between two rounds.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.logger import KVWriter, Logger
from torch.utils.tensorboard import SummaryWriter

from mpq_rl.dashboards.plots import fit_figure

FIT_WINDOW = 20
"""Recent evaluations the surrogate's rank correlation and error are computed over (rounds can be one policy)."""
RANK_CORRELATION = "mbppo/surrogate/rank_correlation"
ABS_ERROR = "mbppo/surrogate/abs_error"
FIT = "mbppo/surrogate/fit"
PROPOSALS = "mbppo/proposals/{}"
SOURCES = ("agent", "relaxation", "neighbours", "random", "probes")
FIT_DRAWS = 4
"""The fit figure is drawn at each quarter of the run's evaluations (and at the end)."""


class _RoundAverages(KVWriter):
    """Collects stable-baselines3's ``train/`` values between two rounds."""

    def __init__(self) -> None:
        self.values: dict[str, list[float]] = {}

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, Any], step: int = 0) -> None:
        for key, value in key_values.items():
            if key.startswith("train/") and isinstance(value, (int, float, np.floating)):
                self.values.setdefault(key, []).append(float(value))

    def close(self) -> None:
        """Nothing to release: the board writes and closes the file."""


class LearningBoard:
    """Writes mbppo's learning into the run's TensorBoard folder ``log_dir`` (None: keeps nothing, draws nothing)."""

    def __init__(self, log_dir: Path | None, proxy: str, evaluations: int) -> None:
        self.writer = None if log_dir is None else SummaryWriter(str(log_dir))
        self.proxy = proxy
        self.averages = _RoundAverages()
        self.predicted: list[float] = []
        self.measured: list[float] = []
        self.rounds: list[int] = []
        self.draw_every = max(evaluations // FIT_DRAWS, 1)
        self.drawn = 0
        self.step = self.drawn_at = 0

    def ppo_logger(self) -> Logger:
        """A stable-baselines3 logger whose ``train/`` values this board averages per round."""
        return Logger(None, [self.averages])

    def evaluated(self, step: int, predicted: Sequence[float], measured: Sequence[float], sources: Counter) -> None:
        """One round: the surrogate's predictions (made before the refit) and the measured proxies of the policies
        just evaluated, and where those policies came from; ``step`` is the evaluations so far."""
        if self.writer is None or not measured:
            return
        self.step = step
        round_number = (self.rounds[-1] + 1) if self.rounds else 0
        self.predicted += [float(p) for p in predicted]
        self.measured += [float(m) for m in measured]
        self.rounds += [round_number] * len(measured)
        recent_p, recent_m = np.array(self.predicted[-FIT_WINDOW:]), np.array(self.measured[-FIT_WINDOW:])
        self.writer.add_scalar(ABS_ERROR, float(np.abs(recent_p - recent_m).mean()), step)
        if len(np.unique(recent_p)) > 1 and len(np.unique(recent_m)) > 1:
            from scipy.stats import spearmanr

            self.writer.add_scalar(RANK_CORRELATION, float(spearmanr(recent_p, recent_m).statistic), step)
        for source in SOURCES:
            self.writer.add_scalar(PROPOSALS.format(source), sources.get(source, 0), step)
        for key, values in self.averages.values.items():
            self.writer.add_scalar(key, float(np.mean(values)), step)
        self.averages.values.clear()
        if step // self.draw_every > self.drawn:
            self.drawn = step // self.draw_every
            self._draw()

    def _draw(self) -> None:
        self.drawn_at = self.step
        title = f"surrogate: predicted against measured, {len(self.measured)} evaluations"
        self.writer.add_figure(
            FIT, fit_figure(self.predicted, self.measured, self.rounds, self.proxy, title), self.step
        )

    def close(self) -> None:
        if self.writer is None:
            return
        if self.measured and self.drawn_at != self.step:
            self._draw()
        self.writer.close()
