"""The search's progress display: a bar on a terminal, sparse lines in a log."""

from __future__ import annotations

import sys
import time

from mpq_rl.search.episode import Episode
from mpq_rl.runs.recorder import Recorder

PROGRESS_STEP = 0.1
"""Away from a terminal, a progress line each time this fraction of the episodes is done ..."""
PROGRESS_SECONDS = 60.0
"""... or when this long has passed since the last line."""


class SearchProgress:
    """Episodes done, best reward, its proxy accuracy and cost ratio: a tqdm bar on a terminal; elsewhere (a log
    file, a pipe, a batch job) a short line on stderr every :data:`PROGRESS_STEP` of the run or
    :data:`PROGRESS_SECONDS`, whichever comes first, so a log gets tens of lines per run, not one per update.

    The time left is estimated from the episodes after the first one of this part, which also carries one-off work
    (Hessian traces, a sensitivity pre-pass, probes) that would otherwise make the estimate hours long."""

    def __init__(self, total: int, initial: int, enabled: bool, proxy: str, metric: str) -> None:
        from tqdm.auto import tqdm

        self.terminal = enabled and (sys.stderr.isatty() or "ipykernel" in sys.modules)  # a notebook shows a bar
        self.bar = tqdm(total=total, initial=initial, disable=not self.terminal, unit="ep", desc="search", leave=False)
        self.lines = enabled and not self.terminal
        self.proxy, self.metric = proxy, metric
        self.total, self.done = total, initial
        self.started = self.last_line = time.monotonic()
        self.last_step = self._step(initial)
        self.timed_from: tuple[int, float] | None = None
        """(episodes done, time) when the first episode of this part ended: the start of the time-left estimate."""

    def _step(self, done: int) -> int:
        return int(done / max(self.total, 1) / PROGRESS_STEP)

    def _best(self, recorder: Recorder) -> str:
        best = recorder.best
        if best is None:
            return "none within the budget yet"
        return (
            f"best reward {best.reward:.3f}, {self.proxy} {best.proxy:.4f}, "
            f"{self.metric} {best.cost_ratio[self.metric]:.3f} of W8A8"
        )

    def _left(self, number: int, now: float) -> str:
        if self.timed_from is None or number <= self.timed_from[0]:
            return ""
        done, since = self.timed_from
        return f", about {(self.total - number) * (now - since) / (number - done):.0f} s left"

    def __call__(self, number: int, episode: Episode, recorder: Recorder, improved: bool) -> None:
        self.done = number
        first = self.timed_from is None
        if first:
            self.timed_from = (number, time.monotonic())
        if self.lines:
            now = time.monotonic()
            step = self._step(number)
            if step > self.last_step or now - self.last_line >= PROGRESS_SECONDS or number == self.total:
                self.last_step, self.last_line = step, now
                print(
                    f"search: {number}/{self.total} episodes ({100 * number / max(self.total, 1):.0f}%), "
                    f"{self._best(recorder)}, {now - self.started:.0f} s{self._left(number, now)}",
                    file=sys.stderr,
                    flush=True,
                )
            return
        best = recorder.best
        if best is not None:
            self.bar.set_postfix(
                best=f"{best.reward:.3f}",
                **{self.proxy: f"{best.proxy:.4f}", self.metric: f"{best.cost_ratio[self.metric]:.3f}"},
                refresh=False,
            )
        self.bar.update(1)
        if first:  # restart the bar's clock so that its rate and time left leave the first episode out
            self.bar.reset(total=self.total)
            self.bar.initial = self.bar.n = self.bar.last_print_n = number
            self.bar.refresh()

    def close(self) -> None:
        self.bar.close()
