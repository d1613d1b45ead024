"""What every searcher receives and the one method it implements.

A searcher (RL agent or baseline) proposes policies as choices, one ``(weight index, activation index)`` per
searched layer, and has them scored through :meth:`SearchContext.score` / :meth:`SearchContext.score_many`, which
evaluate with the run's one evaluator cache and budget and hand every episode to the trainer's recorder. The
search ends when :attr:`SearchContext.done` says the evaluation budget (``agent.episodes``) is spent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from mpq_rl.errors import UserError
from mpq_rl.search.budget import Choice
from mpq_rl.search.episode import Episode
from mpq_rl.search.pool import EvaluationPool
from mpq_rl.search.problem import SearchProblem

Options = TypeVar("Options", bound="SearcherOptions")


@dataclass
class SearchReport:
    """What a searcher reports about its own work besides episodes (``summary.json``'s ``search`` section)."""

    sensitivity_seconds: float | None = None
    """Wall time of the sensitivity pre-pass (no evaluation)."""
    budgets: list[float] | None = None
    """The budget fractions the searcher searched at once; the run reports held-out scores at each."""
    surrogate_samples: int | None = None
    """Evaluations the surrogate was last fitted on."""
    hawq_ranking: str | None = None
    """hawq's ranked solutions: ``exact``, or ``beam`` once its frontier passed its cap."""
    subset_evaluations: float | None = None
    """Scores on parts of the calibration split, in whole-split evaluations (evolution)."""

    def to_dict(self) -> dict[str, Any]:
        """The fields a searcher set."""
        return {key: value for key, value in asdict(self).items() if value is not None}


@dataclass
class SearchContext:
    """The run as a searcher sees it: the problem, the evaluation budget, the seed and the recorder."""

    problem: SearchProblem
    episodes: int
    seed: int
    record: Callable[[Episode], None]
    """Called once per scored policy, in order; the trainer logs, checkpoints and tracks the best."""
    output: Path
    n_envs: int = 1
    """The RL agents' parallel environments, and the batch of searchers whose results depend on how they batch."""
    pool: EvaluationPool | None = None
    """Where batches are evaluated in parallel (the run's ``parallel`` section); None: one at a time, here."""
    log_dir: Path | None = None
    """The run's TensorBoard folder, where a searcher may chart its own training (None: no charts)."""
    report: SearchReport = field(default_factory=SearchReport)
    """What the searcher reports about its own work besides episodes."""
    recorded: int = 0
    """Episodes recorded so far in this run (including those of an interrupted run being resumed)."""

    @property
    def done(self) -> bool:
        return self.recorded >= self.episodes

    @property
    def remaining(self) -> int:
        return max(self.episodes - self.recorded, 0)

    def rng(self) -> np.random.Generator:
        return np.random.default_rng(self.seed)

    def score(self, choices: Sequence[Choice], projected_layers: int = 0) -> Episode:
        """Score one policy and record it."""
        episode = self.problem.score(choices, projected_layers)
        self.add(episode)
        return episode

    @property
    def batch(self) -> int:
        """How many policies to propose at once when the results do not depend on it (random, exhaustive): enough
        to keep every worker busy, and at least ``n_envs``."""
        return max(self.n_envs, self.pool.workers if self.pool is not None else 1)

    def score_many(self, batch: Sequence[Sequence[Choice]]) -> list[Episode]:
        """Score several policies and record them in order; with a parallel backend the evaluation :attr:`pool`
        evaluates the ones not in the cache in parallel first. Stops early once the evaluation budget is spent."""
        batch = [list(c) for c in batch[: self.remaining]]
        self.prefetch(batch)
        return [self.score(c) for c in batch]

    def prefetch(self, batch: Sequence[Sequence[Choice]]) -> None:
        """Evaluate the policies of ``batch`` (as :meth:`score` would enforce them) through the pool, without
        recording them: the RL environments' last steps come here before they score."""
        if self.pool is not None and len(batch) > 1:
            self.pool.prefetch([self.problem.policy(self.problem.enforce(c)[0]) for c in batch])

    def add(self, episode: Episode) -> None:
        """Record an episode scored elsewhere (e.g. by an environment in a worker process)."""
        self.recorded += 1
        self.record(episode)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()


class SearcherOptions(BaseModel):
    """A searcher's ``agent.kwargs``: subclass it with one typed field (and default) per option; validated like
    the run configuration (unknown keys refused, values of the declared type only) by :func:`parse_options`."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def parse_options(searcher: str, given: Mapping[str, Any], model: type[Options]) -> Options:
    """``given`` (a searcher's ``agent.kwargs``) as ``model``; a bad key or value is a user error naming it."""
    try:
        return model(**given)
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(part) for part in error["loc"])
        if error["type"] == "extra_forbidden":
            allowed = ", ".join(sorted(model.model_fields)) or "none"
            raise UserError(
                f"agent.kwargs for {searcher!r} has unknown key {key!r}: allowed keys are {allowed}"
            ) from None
        raise UserError(f"agent.kwargs.{key} for {searcher!r}: {error['msg']}, got {error['input']!r}") from None


class Searcher:
    """A search method: propose policies and score them through the context until it is done. Subclass it and
    implement :meth:`search`; the optional methods have defaults that do nothing."""

    def search(self, context: SearchContext) -> None:
        raise NotImplementedError

    def resume_point(self, output: Path) -> int | None:
        """Optional: the episodes a resumed run can continue from (e.g. a checkpoint in ``output``), checked
        before the run writes anything; None (the default) re-runs the searcher from its seed."""
        return None
