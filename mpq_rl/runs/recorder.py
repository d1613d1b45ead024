"""The recorder: every episode of a search, in order, into ``episodes.csv``; the best policy and the Pareto front.

A searcher hands each scored episode to the recorder (through :class:`~mpq_rl.search.searcher.SearchContext`). It
appends one row per episode to ``episodes.csv`` (flushed at once; no wall times, so two runs with one seed compare
byte for byte), keeps the best in-budget policy in ``policy.json`` as soon as it improves, keeps the Pareto front
of proxy accuracy against cost, and passes everything on to the TensorBoard logger and the progress bar. A resumed
run rebuilds the same state from the rows already written.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mpq_rl.hardware.cost_table import METRICS
from mpq_rl.errors import UserError
from mpq_rl.io import atomic_write_json, atomic_write_text
from mpq_rl.quantization.policy import save_policy
from mpq_rl.search.episode import Episode, EpisodeTable
from mpq_rl.search.problem import SearchProblem

EPISODES_FILE = "episodes.csv"
POLICY_FILE = "policy.json"
PARETO_FILE = "pareto.json"
EVALUATIONS_FILE = "evaluations.json"


def read_episodes(path: Path, problem: SearchProblem) -> list[tuple[int, Episode]]:
    """The episodes of the ``episodes.csv`` of a run of ``problem`` (empty if the file does not exist).

    A file with other columns than ``problem`` writes, a row cut short or not numeric, or episode numbers other
    than 1, 2, 3, ... in order are a :class:`UserError`.
    """
    if not path.is_file():
        return []
    table = EpisodeTable(problem.workload.layers.names, sorted(problem.evaluator.fp32), sorted(METRICS))
    fix = "restore the file, or delete it to record the episodes again from the evaluation cache"
    episodes: list[tuple[int, Episode]] = []
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle, restkey=_EXTRA)
            if reader.fieldnames is not None and list(reader.fieldnames) != table.header:
                raise UserError(f"{path} has other columns than this run writes: {fix}")
            for row in reader:
                episode = _parse(table, row, problem.proxy_fp32)
                if episode is None or episode[0] != len(episodes) + 1:
                    raise UserError(f"{path} line {reader.line_num}: not episode {len(episodes) + 1}'s row: {fix}")
                episodes.append(episode)
    except (UnicodeDecodeError, csv.Error):
        raise UserError(f"{path} is not a CSV file of episodes: {fix}") from None
    return episodes


_EXTRA = "(extra)"
"""The key under which ``csv.DictReader`` puts the cells of a row longer than the header."""


def _parse(table: EpisodeTable, row: dict[str, Any], proxy_fp32: float) -> tuple[int, Episode] | None:
    """The episode of a complete, well-formed row; None if the row is cut short, too long or not numeric."""
    if _EXTRA in row or None in row.values():
        return None
    try:
        return table.episode(row, proxy_fp32)
    except ValueError:
        return None


def truncate_episodes(path: Path, keep: int) -> None:
    """Keep the header and the first ``keep`` rows of an ``episodes.csv`` (atomically)."""
    lines = path.read_text().splitlines(keepends=True)
    atomic_write_text(path, "".join(lines[: keep + 1]))


class ParetoFront:
    """The policies no other beats on both proxy accuracy (higher) and cost ratio (lower)."""

    def __init__(self) -> None:
        self.points: list[dict[str, Any]] = []

    def add(self, number: int, episode: Episode, metric: str) -> bool:
        """Offer an episode; True if it joined the front."""
        proxy, cost = float(episode.proxy), float(episode.cost_ratio[metric])
        if not (math.isfinite(cost) and math.isfinite(proxy)) or any(
            p["proxy"] >= proxy and p["cost_ratio"] <= cost for p in self.points
        ):
            return False
        self.points = [p for p in self.points if not (proxy >= p["proxy"] and cost <= p["cost_ratio"])]
        self.points.append(
            {
                "episode": number,
                "proxy": proxy,
                "cost_ratio": cost,
                "reward": float(episode.reward),
                "within_budget": bool(episode.within_budget),
                "policy": episode.to_json()["policy"],
            }
        )
        self.points.sort(key=lambda p: (p["cost_ratio"], -p["proxy"]))
        return True


def better(episode: Episode, than: Episode, metric: str) -> bool:
    """Whether ``episode`` beats ``than``: a higher reward, or the same reward at a lower cost in ``metric``.

    Every searcher's best is chosen this way, so of two equally accurate policies the cheaper one is reported.
    """
    if episode.reward != than.reward:
        return episode.reward > than.reward
    return episode.cost_ratio[metric] < than.cost_ratio[metric]


Listener = Callable[[int, Episode, "Recorder", bool], None]
"""Called after each recorded episode with (number, episode, recorder, best improved)."""


class Recorder:
    """Writes every episode, tracks the best in-budget policy and the Pareto front; the run's ``record``."""

    def __init__(
        self,
        folder: Path,
        problem: SearchProblem,
        listeners: Sequence[Listener] = (),
        save_every: int = 50,
        on_save: Callable[[], None] | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.problem = problem
        self.metric = problem.metric
        self.listeners = list(listeners)
        self.save_every = save_every
        self.on_save = on_save
        self.count = 0
        self.replay = 0
        """Episodes still to be skipped: a resumed searcher that re-runs from the start replays them."""
        self.best: Episode | None = None
        self.best_number = 0
        self.pareto = ParetoFront()
        self.table: EpisodeTable | None = None
        self._handle = None
        self._writer: Any = None

    @property
    def path(self) -> Path:
        return self.folder / EPISODES_FILE

    def restore(self, episodes: list[tuple[int, Episode]], relog: Listener | None = None, logged: int = 0) -> None:
        """Rebuild the count, best, Pareto front and ``policy.json`` from the episodes a resumed run keeps; episodes
        after ``logged`` are passed to ``relog`` (the TensorBoard logger) as they were when first recorded."""
        for number, episode in episodes:
            self.count = number
            improved = self._track(number, episode)
            if relog is not None and number > logged:
                relog(number, episode, self, improved)
        if episodes:
            self.table = EpisodeTable.for_episode(episodes[0][1])
        self._save_best()  # an interrupted part may have found a best among the episodes that are redone

    def _save_best(self) -> None:
        """Write ``policy.json`` for the best policy, or remove it while there is none."""
        if self.best is None:
            (self.folder / POLICY_FILE).unlink(missing_ok=True)
            return
        save_policy(self.folder / POLICY_FILE, self.best.policy, **self.best.sections(self.best_number))

    def _track(self, number: int, episode: Episode) -> bool:
        self.pareto.add(number, episode, self.metric)
        scored = math.isfinite(episode.reward) and math.isfinite(episode.proxy)  # NaN is never a result
        improved = scored and episode.within_budget and (self.best is None or better(episode, self.best, self.metric))
        if improved:
            self.best, self.best_number = episode, number
        return bool(improved)

    def __call__(self, episode: Episode) -> None:
        if self.replay > 0:
            self.replay -= 1
            return
        self.count += 1
        number = self.count
        self._write_row(number, episode)
        improved = self._track(number, episode)
        if improved:
            self._save_best()
        for listener in self.listeners:
            listener(number, episode, self, improved)
        if number % self.save_every == 0:
            self.save()

    def _write_row(self, number: int, episode: Episode) -> None:
        if self._handle is None:
            new = not self.path.is_file() or self.path.stat().st_size == 0
            if self.table is None:
                self.table = EpisodeTable.for_episode(episode)
            self._handle = self.path.open("a", newline="")
            self._writer = csv.writer(self._handle, lineterminator="\n")
            if new:
                self._writer.writerow(self.table.header)
        self._writer.writerow(self.table.row(number, episode))
        self._handle.flush()

    def save(self) -> None:
        """Persist the evaluator cache and the Pareto front (atomically), then call ``on_save``."""
        self.problem.evaluator.cache.save(self.folder / EVALUATIONS_FILE)
        atomic_write_json(
            self.folder / PARETO_FILE,
            {"metric": self.metric, "proxy": self.problem.proxy.key, "points": self.pareto.points},
        )
        if self.on_save is not None:
            self.on_save()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
