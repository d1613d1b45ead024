"""TensorBoard logging of a search, into ``<run folder>/tb``.

Keys are namespaced like CleanRL's: ``episode/``, ``proxy/``, ``cost/``, ``cost_ratio/``, ``best/`` per episode
(step = episode number), ``bits/`` histograms over windows of episodes, a ``best/bits`` figure of the best policy
each time it improves, a custom-scalars layout grouping the charts, and the run's hyper-parameters with the final
best reward and proxy as metrics and the held-out score of the best policy (HParams plugin). The RL agents' own
losses come from stable-baselines3's logger, which writes to the same folder under ``train/`` and ``rollout/``,
with the step converted to episodes like every other chart (:func:`mpq_rl.agents.sb3.agent_logger`).

A resumed run continues the same charts: it drops whatever the interrupted part logged after the last episode the
resumed run keeps (TensorBoard's purge step) and logs again the kept episodes that the interruption lost before
they reached the disk, so every episode appears once.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from mpq_rl.search.episode import Episode

TB_DIR = "tb"
REWARD = "episode/reward"
PROJECTED_LAYERS = "episode/projected_layers"
PROXY = "proxy/{}"
COST = "cost/{}"
COST_RATIO = "cost_ratio/{}"
BEST_REWARD = "best/reward"
BEST_PROXY = "best/proxy"
BEST_COST_RATIO = "best/cost_ratio"
BEST_BITS = "best/bits"
BEST_TEST = "best/test_{}"
WEIGHT_BITS = "bits/weights"
ACTIVATION_BITS = "bits/activations"
HISTOGRAM_WINDOW = 20
"""Episodes per histogram of chosen bits."""


def layout() -> dict[str, dict[str, list[Any]]]:
    """The custom-scalars layout: one chart per group of related keys."""
    return {
        "search": {
            "reward": ["Multiline", [REWARD, BEST_REWARD]],
            "proxy accuracy": ["Multiline", [r"proxy/.*", BEST_PROXY]],
            "cost ratio (of W8A8)": ["Multiline", [r"cost_ratio/.*", BEST_COST_RATIO]],
        },
        "agent": {
            "losses": ["Multiline", [r"train/.*loss"]],
        },
    }


def bits_figure(policy: Mapping[str, tuple[int, int] | list[int]], title: str):
    """A bar chart of weight and activation bits per layer."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    names = list(policy)
    x = np.arange(len(names))
    figure, axes = plt.subplots(figsize=(max(6.0, 0.6 * len(names)), 3.5))
    axes.bar(x - 0.2, [policy[n][0] for n in names], width=0.4, label="weights")
    axes.bar(x + 0.2, [policy[n][1] for n in names], width=0.4, label="activations")
    axes.set_xticks(x, names, rotation=60, ha="right", fontsize=8)
    axes.set_ylabel("bits")
    axes.set_title(title)
    axes.legend()
    figure.tight_layout()
    return figure


class TensorBoardLogger:
    """Writes the search's TensorBoard events; a :class:`~mpq_rl.runs.recorder.Recorder` listener."""

    def __init__(
        self, folder: Path, hyperparameters: Mapping[str, Any], searched: tuple[str, ...], keep: int | None = None
    ) -> None:
        """A new run's logger, or with ``keep`` a resumed run's, which drops what was logged after episode
        ``keep``. ``hyperparameters`` are the run's settings as flat HParams values (:meth:`RunConfig.hparams`)."""
        self.folder = Path(folder) / TB_DIR
        self.hyperparameters = dict(hyperparameters)
        self.searched = searched
        self.writer = SummaryWriter(str(self.folder), purge_step=None if keep is None else keep + 1)
        self._window: list[Episode] = []
        self.writer.add_custom_scalars(layout())  # again on resume: an interrupted part may not have flushed it

    def __call__(self, number: int, episode: Episode, recorder: Any, improved: bool) -> None:
        scalars = {REWARD: episode.reward, PROJECTED_LAYERS: episode.projected_layers}
        scalars.update({PROXY.format(k): v for k, v in episode.metrics.items()})
        scalars.update({COST.format(k): v for k, v in episode.cost.items()})
        scalars.update({COST_RATIO.format(k): v for k, v in episode.cost_ratio.items()})
        best = recorder.best
        if best is not None:
            scalars.update(
                {
                    BEST_REWARD: best.reward,
                    BEST_PROXY: best.proxy,
                    BEST_COST_RATIO: best.cost_ratio[recorder.metric],
                }
            )
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, float(value), number)
        if improved:
            title = f"best policy, episode {number}: reward {episode.reward:.4g}, proxy {episode.proxy:.4f}"
            self.writer.add_figure(BEST_BITS, bits_figure(episode.policy, title), number)
        self._window.append(episode)
        if number % HISTOGRAM_WINDOW == 0:
            self._histograms(number)

    def _histograms(self, number: int) -> None:
        chosen = [e.policy[n] for e in self._window for n in self.searched]
        self.writer.add_histogram(WEIGHT_BITS, np.array([b[0] for b in chosen]), number)
        self.writer.add_histogram(ACTIVATION_BITS, np.array([b[1] for b in chosen]), number)
        self._window = []

    def finish(self, best: Episode | None, test: Mapping[str, float] | None, episodes: int) -> None:
        """The held-out metrics of the best policy (``best/test_*``, at the last episode) and the hyper-parameters
        with them and the final best reward and proxy (read by the HParams plugin, whose table then compares runs by
        their held-out result)."""
        metrics = {BEST_REWARD: best.reward, BEST_PROXY: best.proxy} if best is not None else {}
        for key, value in (test or {}).items():
            metrics[BEST_TEST.format(key)] = value
            self.writer.add_scalar(BEST_TEST.format(key), float(value), episodes)
        experiment, start, end = hparams(self.hyperparameters, metrics)
        file_writer = self.writer._get_file_writer()
        for summary in (experiment, start, end):
            file_writer.add_summary(summary)

    def close(self) -> None:
        self.writer.close()


def logged_episodes(folder: Path) -> int:
    """The last episode whose reward reached ``<folder>/tb`` on disk (0 if none)."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    if not (Path(folder) / TB_DIR).is_dir():
        return 0
    events = EventAccumulator(str(Path(folder) / TB_DIR), size_guidance={SCALARS: 0}).Reload()
    if REWARD not in events.Tags()[SCALARS]:
        return 0
    return max(event.step for event in events.Scalars(REWARD))
