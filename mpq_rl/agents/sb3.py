"""stable-baselines3 plumbing shared by the searchers that train an SB3 algorithm (:mod:`mpq_rl.agents.rl`,
:mod:`mpq_rl.agents.model_based`): environments stepped together over the search's evaluation pool, the
callback that records every finished episode, and the logger that charts the algorithm's losses per episode."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger, TensorBoardOutputFormat
from stable_baselines3.common.vec_env import DummyVecEnv

from mpq_rl.envs import BitWidthEnv
from mpq_rl.search.episode import Episode
from mpq_rl.search.searcher import SearchContext

DEFAULT_CHECKPOINT_EVERY = 50


class PooledVecEnv(DummyVecEnv):
    """``n_envs`` environments in this process, sharing the run's problem: before each step, the policies that
    step completes are evaluated together through the search's evaluation pool, so the environments then score
    from the cache."""

    def __init__(self, envs: list[BitWidthEnv], context: SearchContext) -> None:
        super().__init__([lambda env=env: env for env in envs])
        self.context = context

    def step_wait(self):
        pending = [env.pending_choices(action) for env, action in zip(self.envs, self.actions, strict=True)]
        finishing = [choices for choices in pending if choices is not None]
        self.context.prefetch(finishing[: self.context.remaining])  # the callback records no more than these
        return super().step_wait()


class RecordEpisodes(BaseCallback):
    """Hands each finished episode to the run (in environment order) and stops training once the run is done.

    ``checkpoint``: called with the model every ``every`` recorded episodes.
    """

    def __init__(
        self,
        context: SearchContext,
        checkpoint: Callable[[BaseAlgorithm], None] | None = None,
        every: int = DEFAULT_CHECKPOINT_EVERY,
    ) -> None:
        super().__init__()
        self.context, self.checkpoint, self.every = context, checkpoint, every

    def _on_step(self) -> bool:
        context = self.context
        for done, info in zip(self.locals["dones"], self.locals["infos"], strict=True):
            if not done or context.done:
                continue
            episode = Episode.from_json(info)
            context.add(episode)
            exploration = getattr(self.model, "exploration", None)
            if exploration is not None:
                exploration.episode = context.recorded
            if self.checkpoint is not None and context.recorded % self.every == 0:
                self.checkpoint(self.model)
        return not context.done


class _EpisodeSteps(TensorBoardOutputFormat):
    """stable-baselines3's TensorBoard output with environment steps converted to episodes."""

    def __init__(self, folder: str, steps_per_episode: int) -> None:
        super().__init__(folder)
        self.steps_per_episode = steps_per_episode

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, Any], step: int = 0) -> None:
        super().write(key_values, key_excluded, step // self.steps_per_episode)


def agent_logger(folder: Path, steps_per_episode: int) -> Logger:
    """A stable-baselines3 logger that writes the agent's losses to the TensorBoard folder ``folder`` against
    episodes (``steps_per_episode`` environment steps each), like the search's own charts."""
    return Logger(str(folder), [_EpisodeSteps(str(folder), steps_per_episode)])
