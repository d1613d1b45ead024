"""The search loop: build the problem, run a searcher, record every episode, and report the best policy.

:func:`run_search` is the whole of ``mpq-rl search``. The run folder (``config.output``: new, empty, or an earlier
run's, see :mod:`mpq_rl.runs.run_folder`) receives ``mpq_rl_run.json`` (the manifest that marks it as a run folder)
and
``mpq_rl.lock`` (held while the search runs), then, as the search goes: ``config.yaml`` (the resolved config,
library versions and command in comments, loadable with ``--config``), ``episodes.csv``, ``policy.json`` (best
in-budget policy), ``pareto.json``, ``evaluations.json`` (the evaluator cache), ``tb/`` (TensorBoard) and, for RL
agents, ``checkpoint/`` (no pickle); at the end ``summary.json`` with the held-out test metrics of the best
policy, of FP32 and of every uniform setting that fits the budget.

An interrupted run (Ctrl-C, or a killed process) resumes with ``resume=<folder>``: the evaluator cache is
reloaded (no policy is evaluated twice), RL agents continue from their checkpoint, other searchers re-run from
their seed (their first episodes replay from the cache and are not written again). A file of the folder that is
not what the run wrote (cut short, not numeric, not matching its recorded digest) stops the resume with one line
saying which file and how to repair it. A resumed run is the same run: ``policy.json``, the Pareto front and the
TensorBoard charts describe exactly the episodes it keeps (an RL agent redoes those after its last checkpoint),
``summary.json`` is removed until the run finishes again, and its totals (evaluations, wall time) count every
part, listed under ``parts`` in ``summary.json``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mpq_rl.agents import build_searcher
from mpq_rl.agents.checkpoint import CHECKPOINT_DIR
from mpq_rl.config import RunConfig
from mpq_rl.errors import UserError
from mpq_rl.io import atomic_write_json
from mpq_rl.runs.assembly import build_problem
from mpq_rl.runs.dashboard import SearchDashboard
from mpq_rl.runs.held_out import held_out_scores
from mpq_rl.runs.logger import TB_DIR, TensorBoardLogger, logged_episodes
from mpq_rl.runs.progress import SearchProgress
from mpq_rl.runs.recorder import (
    EPISODES_FILE,
    EVALUATIONS_FILE,
    PARETO_FILE,
    POLICY_FILE,
    Recorder,
    read_episodes,
    truncate_episodes,
)
from mpq_rl.runs.run_folder import (
    CONFIG_FILE,
    RunParts,
    check_new_run_folder,
    exclusive,
    is_run_folder,
    resumed_config,
    run_config,
    write_config,
    write_manifest,
)
from mpq_rl.runs.summary import SUMMARY_FILE, SearchResult, summary
from mpq_rl.safe_files import remove
from mpq_rl.search.evaluator import EvaluationCache
from mpq_rl.search.pool import EvaluationPool, resolve_parallel
from mpq_rl.search.problem import SearchProblem
from mpq_rl.search.searcher import SearchContext, Searcher

CHECKPOINT_EVERY = 50
"""Episodes between saves of the evaluator cache and the Pareto front (RL agents: and their checkpoint)."""


class SearchInterrupted(KeyboardInterrupt):
    """Ctrl-C during a search: the folder was saved and can be resumed; the message says how."""


def _refuse_unfinished(folder: Path) -> None:
    if (folder / CONFIG_FILE).is_file() and not (folder / SUMMARY_FILE).is_file():
        raise UserError(f"{folder} holds an unfinished run: resume it with --resume {folder}, or pick another --output")


def _prepare_folder(folder: Path) -> None:
    """A fresh run folder, once its lock is held: refuse to overwrite an unfinished run; replace a finished one (it
    is reproducible); mark the folder as a run folder."""
    _refuse_unfinished(folder)
    if (folder / CONFIG_FILE).is_file():
        print(f"mpq-rl: replacing the finished run in {folder}", file=sys.stderr)
        for name in (CONFIG_FILE, SUMMARY_FILE, EPISODES_FILE, POLICY_FILE, PARETO_FILE, EVALUATIONS_FILE):
            (folder / name).unlink(missing_ok=True)
        for name in (TB_DIR, CHECKPOINT_DIR):
            remove(folder / name)
    write_manifest(folder)


def run_search(
    config: RunConfig | None,
    resume: Path | None = None,
    progress: bool = True,
    overrides: Mapping[str, Any] | None = None,
) -> SearchResult:
    """Run the search ``config`` describes (or resume the one in ``resume``) and return what it found.

    With ``resume``, ``config`` may be None (the folder's config, with ``overrides`` applied: dotted keys as in
    :meth:`RunConfig.with_overrides`) or that config with ``agent.episodes`` changed; the folder's config is read
    once, here.
    Whatever can refuse the run (the folder, the searcher's options, the model, the budget) is checked before
    anything is written; the run then holds its folder's lock to the end. Ctrl-C saves everything needed to resume
    and raises :class:`SearchInterrupted`.
    """
    started = time.perf_counter()
    if config is None and resume is None:
        raise ValueError("run_search needs a config or a folder to resume")
    if resume is not None:
        folder = Path(resume)
        saved = run_config(folder)
        asked = saved.with_overrides(**(overrides or {})) if config is None else config
        config = resumed_config(saved, asked)
    else:
        folder = Path(config.output)
        check_new_run_folder(folder)
        _refuse_unfinished(folder)
    searcher = build_searcher(config.agent.name, config.agent.kwargs)
    problem = build_problem(config)
    pool = EvaluationPool(
        problem, resolve_parallel(config.parallel, config.agent.n_envs)
    )  # nothing starts yet, but a missing Ray stops the run here
    with exclusive(folder):
        if resume is None:
            _prepare_folder(folder)
        elif not is_run_folder(folder):
            write_manifest(folder)  # a run folder of an mpq_rl from before manifests
        return _search(
            folder, config, searcher, problem, pool, resuming=resume is not None, progress=progress, started=started
        )


def _search(
    folder: Path,
    config: RunConfig,
    searcher: Searcher,
    problem: SearchProblem,
    pool: EvaluationPool,
    resuming: bool,
    progress: bool,
    started: float,
) -> SearchResult:
    """The body of :func:`run_search`, in the run folder it holds."""
    # -- the state of the run being resumed, read (and checked) before anything is written -----------------------
    evaluator = problem.evaluator
    evaluator.cache.merge(EvaluationCache.load(folder / EVALUATIONS_FILE, metrics=evaluator.fp32))
    cached_at_start = len(evaluator.cache)
    previous = read_episodes(folder / EPISODES_FILE, problem) if resuming else []
    point = searcher.resume_point(folder) if previous else None
    if point is not None and point > len(previous):
        raise UserError(
            f"{folder / CHECKPOINT_DIR} covers {point} episodes but {EPISODES_FILE} holds {len(previous)}: restore "
            f"{EPISODES_FILE}, or delete the checkpoint folder to re-run the agent from its seed"
        )
    kept = len(previous) if point is None else min(point, len(previous))
    logged = min(logged_episodes(folder), kept) if resuming else None
    write_config(folder, config)
    (folder / SUMMARY_FILE).unlink(missing_ok=True)  # until this part finishes, the run has no summary
    parts = RunParts(folder)
    parts.start(after_episode=kept, redone=len(previous) - kept)

    def save_part() -> None:
        parts.update(time.perf_counter() - started, len(evaluator.cache) - cached_at_start)

    # -- the recorder and its listeners ---------------------------------------------------------------------------
    proxy_name = config.proxy.key
    logger = TensorBoardLogger(folder, config.hparams(), problem.searched, keep=logged)
    elapsed = time.perf_counter() - started
    bar = SearchProgress(config.agent.episodes, kept, progress, proxy_name, problem.metric, elapsed=elapsed)
    dashboard = SearchDashboard(logger.writer, problem, config.agent.name, config.agent.episodes, proxy_name)
    listeners = [logger, dashboard, bar]
    recorder = Recorder(folder, problem, listeners=listeners, save_every=CHECKPOINT_EVERY, on_save=save_part)
    context = SearchContext(
        problem=problem,
        episodes=config.agent.episodes,
        seed=config.seed,
        record=recorder,
        output=folder,
        n_envs=config.agent.n_envs,
        log_dir=folder / TB_DIR,
        pool=pool,
    )
    if resuming:
        truncate_episodes(folder / EPISODES_FILE, kept)  # and a last row cut short by a kill or a full disk
        previous = previous[:kept]
    if previous:
        recorder.restore(previous, relog=logger, logged=logged or 0)
        if point is not None:
            context.recorded = len(previous)
        else:
            recorder.replay = len(previous)

    # -- the search ---------------------------------------------------------------------------------------------
    bar.start(config.agent.name)
    try:
        searcher.search(context)
    except KeyboardInterrupt:
        recorder.save()
        raise SearchInterrupted(
            f"interrupted after {recorder.count} episodes; resume with: mpq-rl search --resume {folder}"
        ) from None
    finally:
        context.close()
        recorder.close()
        bar.close()
    recorder.save()
    evaluations = int(parts.total("evaluations"))

    # -- held-out evaluation of the best policy, FP32 and the uniform settings within budget -----------------------
    held_out = held_out_scores(problem, recorder, context.report.budgets or [])
    evaluator.close()
    logger.finish(recorder.best, held_out.best_test, recorder.count)
    dashboard.finish(recorder, held_out)
    logger.close()
    parts.update(time.perf_counter() - started)  # the held-out scoring adds wall time, not evaluations

    result = SearchResult(
        output=folder,
        best=held_out.best,
        best_test=held_out.best_test,
        fp32_test=held_out.fp32_test,
        uniform=held_out.uniform,
        episodes=recorder.count,
        evaluations=evaluations,
        cache_hits=max(recorder.count - evaluations, 0),
        wall_seconds=parts.total("wall_seconds"),
        metric=problem.metric,
        budget=problem.budget.fraction,
        proxy=proxy_name,
        search={**context.report.to_dict(), "evaluation_seconds": round(problem.evaluation_seconds, 3)},
        best_per_budget=held_out.best_per_budget,
        parts=parts.parts,
    )
    atomic_write_json(folder / SUMMARY_FILE, summary(result, config.agent.name, config.seed, config.budget.enforcement))
    return result
