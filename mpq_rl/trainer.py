"""The search loop: build the problem, run a searcher, record every episode, and report the best policy.

:func:`run_search` is the whole of ``mpq-rl search``. The run folder (``config.output``: new, empty, or an earlier
run's, see :mod:`mpq_rl.run_folder`) receives ``mpq_rl_run.json`` (the manifest that marks it as a run folder) and
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

import platform
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mpq_rl.agents import build_searcher
from mpq_rl.agents.base import SearchContext, Searcher
from mpq_rl.budget import within_fraction
from mpq_rl.config import RunConfig
from mpq_rl.episode import Episode
from mpq_rl.errors import UserError
from mpq_rl.evaluator import EvaluationCache, Metrics, evaluate_on_test
from mpq_rl.formats import label
from mpq_rl.io import atomic_write_json, atomic_write_text, read_json
from mpq_rl.logger import TB_DIR, TensorBoardLogger, logged_episodes
from mpq_rl.metrics import format_metric
from mpq_rl.pool import EvaluationPool
from mpq_rl.problem import SearchProblem, build_problem
from mpq_rl.recorder import (
    EPISODES_FILE,
    EVALUATIONS_FILE,
    PARETO_FILE,
    POLICY_FILE,
    Recorder,
    read_episodes,
    truncate_episodes,
)
from mpq_rl.rewards import proxy_value
from mpq_rl.run_folder import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    CONFIG_HEADER,
    RunParts,
    check_new_run_folder,
    exclusive,
    is_run_folder,
    run_config,
    write_manifest,
)
from mpq_rl.text_table import render_table

SUMMARY_FILE = "summary.json"
CHECKPOINT_EVERY = 50
"""Episodes between saves of the evaluator cache and the Pareto front (RL agents: and their checkpoint)."""
PROGRESS_STEP = 0.1
"""Away from a terminal, a progress line each time this fraction of the episodes is done ..."""
PROGRESS_SECONDS = 60.0
"""... or when this long has passed since the last line."""
RESUMABLE_CHANGES = ("agent.episodes", "parallel.backend", "parallel.workers", "parallel.address")
"""What a resumed run may change in the saved config (where evaluations run does not change what they give)."""


class SearchInterrupted(KeyboardInterrupt):
    """Ctrl-C during a search: the folder was saved and can be resumed; the message says how."""


@dataclass
class SearchResult:
    """What a search found, and where it wrote it."""

    output: Path
    best: dict[str, Any] | None
    """The best in-budget episode (``episode`` number, ``policy``, ``reward``, ``proxy``, costs), None if none fit."""
    best_test: Metrics | None
    """Held-out test metrics of the best policy."""
    fp32_test: Metrics
    uniform: list[dict[str, Any]]
    """Each uniform ``w_bits``/``a_bits`` setting that fits the budget, with ``test`` metrics and ``cost_ratio``."""
    episodes: int
    evaluations: int
    """Distinct policies evaluated on calibration data by the run, every part of a resumed run included."""
    cache_hits: int
    """Episodes answered from the cache."""
    wall_seconds: float
    """Wall time of the run, every part included (an interrupted part up to its last save)."""
    metric: str = "latency"
    budget: float = 0.5
    proxy: str = "top1"
    search: dict[str, Any] = field(default_factory=dict)
    """The searcher's own report (e.g. pre-pass wall times) and ``evaluation_seconds``, the time spent scoring."""
    best_per_budget: list[dict[str, Any]] = field(default_factory=list)
    """With a budget-conditioned searcher: per budget, the best policy found within it, with ``test`` metrics."""
    parts: list[dict[str, Any]] = field(default_factory=list)
    """The run's parts (:class:`~mpq_rl.run_folder.RunParts`): more than one if it was resumed."""

    def report(self) -> str:
        """The end-of-run text: best policy, the comparison table on the test split, and where the results are."""
        lines = []
        if self.best is None:
            lines.append(f"no policy within the budget ({self.budget:g} of W8A8 {self.metric}) was found")
        else:
            bits = "  ".join(f"{n}={label(w)}/{label(a)}" for n, (w, a) in self.best["policy"].items())
            lines.append(
                f"best policy (episode {self.best['episode']} of {self.episodes}, reward {self.best['reward']:.4f}),"
                f" w/a bits: {bits}"
            )

        def test(metrics: Metrics) -> str:
            return format_metric(metrics.get(self.proxy), self.proxy)

        rows = [("policy", f"test {self.proxy}", f"{self.metric} / W8A8", "size / W8A8")]
        rows.append(("FP32", test(self.fp32_test), "-", "-"))
        if self.best is not None and self.best_test is not None:
            ratio = self.best["cost_ratio"]
            rows.append(("searched (best)", test(self.best_test), _f(ratio[self.metric]), _f(ratio.get("size"))))
        for item in self.best_per_budget:
            name = f"best within {item['budget']:g}"
            rows.append((name, test(item["test"]), _f(item["cost_ratio"]), "-"))
        for item in self.uniform:
            ratio = item["cost_ratio"]
            name = f"uniform W{label(item['w_bits'])}A{label(item['a_bits'])}"
            rows.append((name, test(item["test"]), _f(ratio[self.metric]), _f(ratio.get("size"))))
        lines.append(f"held-out test split, budget {self.budget:g} of W8A8 {self.metric}:")
        lines.append(render_table(rows, right=(1, 2, 3)))
        resumed = f" over {len(self.parts)} parts (resumed)" if len(self.parts) > 1 else ""
        lines.append(
            f"{self.episodes} episodes, {self.evaluations} evaluations, {self.cache_hits} cache hits, "
            f"{self.wall_seconds:.1f} s{resumed}"
        )
        lines.append(f"results in {self.output}: {POLICY_FILE}, {SUMMARY_FILE}, {EPISODES_FILE}, {PARETO_FILE}")
        lines.append(f"tensorboard --logdir {self.output / TB_DIR}")
        return "\n".join(lines)


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def versions() -> dict[str, str]:
    """The versions a run depends on, for its config.yaml and summary.json."""
    import gymnasium
    import numpy
    import stable_baselines3
    import torch

    import mpq_rl

    return {
        "mpq_rl": mpq_rl.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "stable_baselines3": stable_baselines3.__version__,
        "gymnasium": gymnasium.__version__,
        "numpy": numpy.__version__,
    }


def write_config(folder: Path, config: RunConfig) -> None:
    """``config.yaml``: the resolved config, preceded by comments naming the versions and the command."""
    header = [f"{CONFIG_HEADER} (resolved); load it with `mpq-rl search --config` or resume the run"]
    header += [f"# {name} {version}" for name, version in versions().items()]
    header.append("# command: " + shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]))
    atomic_write_text(folder / CONFIG_FILE, "\n".join(header) + "\n" + config.to_yaml())


def _check_resumable(saved: RunConfig, asked: RunConfig) -> RunConfig:
    keep = saved.model_dump(mode="json")
    want = asked.model_dump(mode="json")
    for section, values in keep.items():
        if section == "output":
            continue
        if isinstance(values, dict):
            for key, value in values.items():
                dotted = f"{section}.{key}"
                if dotted not in RESUMABLE_CHANGES and want[section][key] != value:
                    raise UserError(
                        f"cannot resume with {dotted} = {want[section][key]!r}: the run used {value!r}; "
                        f"only {', '.join(RESUMABLE_CHANGES)} may change"
                    )
        elif want[section] != values:
            raise UserError(f"cannot resume with {section} = {want[section]!r}: the run used {values!r}")
    return saved.with_overrides(**{k: _get(asked, k) for k in RESUMABLE_CHANGES})


def _get(config: RunConfig, dotted: str) -> Any:
    node: Any = config
    for key in dotted.split("."):
        node = getattr(node, key)
    return node


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
            shutil.rmtree(folder / name, ignore_errors=True)
    write_manifest(folder)


class _Progress:
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


def run_search(config: RunConfig | None, resume: Path | None = None, progress: bool = True) -> SearchResult:
    """Run the search ``config`` describes (or resume the one in ``resume``) and return what it found.

    With ``resume``, ``config`` may be None (the folder's config) or that config with ``agent.episodes`` changed.
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
        config = saved if config is None else _check_resumable(saved, config)
    else:
        folder = Path(config.output)
        check_new_run_folder(folder)
        _refuse_unfinished(folder)
    searcher = build_searcher(config.agent.name, config.agent.kwargs)
    problem = build_problem(config)
    pool = EvaluationPool(problem, config.evaluation)  # nothing starts yet, but a missing Ray stops the run here
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
    workload, evaluator = problem.workload, problem.evaluator
    evaluator.cache.merge(EvaluationCache.load(folder / EVALUATIONS_FILE, metrics=evaluator.fp32))
    cached_at_start = len(evaluator.cache)
    previous = read_episodes(folder / EPISODES_FILE, problem) if resuming else []
    point = searcher.resume_point(folder) if previous else None
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
    logger = TensorBoardLogger(folder, config, problem.searched, keep=logged)
    bar = _Progress(config.agent.episodes, kept, progress, proxy_name, problem.metric)
    recorder = Recorder(folder, problem, listeners=[logger, bar], save_every=CHECKPOINT_EVERY, on_save=save_part)
    context = SearchContext(
        problem=problem,
        episodes=config.agent.episodes,
        seed=config.seed,
        record=recorder,
        output=folder,
        n_envs=config.agent.n_envs,
        pool=pool,
    )
    if previous:
        if kept < len(previous):
            truncate_episodes(folder / EPISODES_FILE, kept)
            previous = previous[:kept]
        recorder.restore(previous, relog=logger, logged=logged or 0)
        if point is not None:
            context.recorded = len(previous)
        else:
            recorder.replay = len(previous)

    # -- the search ---------------------------------------------------------------------------------------------
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
    simulator = evaluator.simulator
    fp32_test = evaluate_on_test(workload, {}, simulator)
    best, best_test = None, None
    if recorder.best is not None:
        best = {**recorder.best.sections(recorder.best_number), "policy": recorder.best.to_json()["policy"]}
        policy = recorder.best.policy
        best_test = evaluate_on_test(workload, policy, simulator)
        best["test_metrics"] = best_test
    per_budget = []
    if len(context.notes.get("budgets", [])) > 1:
        per_budget = best_per_budget(recorder.pareto.points, context.notes["budgets"])
        for item in per_budget:
            item["test"] = evaluate_on_test(workload, _pairs(item["policy"]), simulator)
    uniform = uniform_baselines(problem)
    evaluator.close()
    logger.finish(recorder.best, best_test, recorder.count)
    logger.close()
    parts.update(time.perf_counter() - started)  # the held-out scoring adds wall time, not evaluations

    result = SearchResult(
        output=folder,
        best=best,
        best_test=best_test,
        fp32_test=fp32_test,
        uniform=uniform,
        episodes=recorder.count,
        evaluations=evaluations,
        cache_hits=max(recorder.count - evaluations, 0),
        wall_seconds=parts.total("wall_seconds"),
        metric=problem.metric,
        budget=problem.budget.fraction,
        proxy=proxy_name,
        search={**context.notes, "evaluation_seconds": round(problem.evaluation_seconds, 3)},
        best_per_budget=per_budget,
        parts=parts.parts,
    )
    atomic_write_json(folder / SUMMARY_FILE, summary(result, config))
    return result


def _pairs(policy: dict[str, Any]) -> dict[str, tuple[int, int]]:
    return {name: (int(w), int(a)) for name, (w, a) in policy.items()}


def best_per_budget(front: list[dict[str, Any]], budgets: list[float]) -> list[dict[str, Any]]:
    """For each budget, the Pareto point with the best proxy within it (ties: the cheaper); budgets that no
    evaluated policy fits are left out. ``front`` is :attr:`Recorder.pareto`'s points."""
    found = []
    for fraction in budgets:
        fitting = [p for p in front if within_fraction(p["cost_ratio"], fraction)]
        if not fitting:
            continue
        point = max(fitting, key=lambda p: (p["proxy"], -p["cost_ratio"]))
        found.append(
            {
                "budget": fraction,
                "episode": point["episode"],
                "proxy": point["proxy"],
                "cost_ratio": point["cost_ratio"],
                "policy": point["policy"],
            }
        )
    return found


def uniform_baselines(problem: SearchProblem) -> list[dict[str, Any]]:
    """Every uniform setting among the candidates that fits the budget (costliest first, as the ``uniform`` searcher
    proposes them), with its held-out test metrics and its
    calibration ``metrics`` and ``proxy`` (higher is better): comparisons pick the best uniform setting on the
    calibration proxy, as a searcher would, not on the test split."""
    found = []
    for choices in problem.budget.uniform_choices():
        policy = problem.policy(choices)
        w, a = problem.budget.bits(choices[0])
        ratios = problem.costs.ratios(policy)
        metrics = problem.evaluator.measure(policy)
        test = evaluate_on_test(problem.workload, policy, problem.evaluator.simulator)
        proxy = proxy_value(metrics, problem.proxy)
        found.append({"w_bits": w, "a_bits": a, "test": test, "metrics": metrics, "proxy": proxy, "cost_ratio": ratios})
    return found


def finished_result(folder: str | Path, config: RunConfig) -> SearchResult | None:
    """The result of the finished run of ``config`` in ``folder`` (read back from its ``summary.json``), or None
    if ``folder`` holds no finished run of exactly that config."""
    folder = Path(folder)
    if not (folder / SUMMARY_FILE).is_file() or not (folder / CONFIG_FILE).is_file():
        return None
    if not run_config(folder).same_search(config.with_overrides(output=str(folder))):
        return None
    fix = "delete it, and the next compare resumes the run and redoes its held-out evaluation"
    saved = read_json(folder / SUMMARY_FILE, fix)
    try:
        best = saved["best"]
        return SearchResult(
            output=folder,
            best=best,
            best_test=None if best is None else best["test_metrics"],
            fp32_test=saved["fp32"]["test_metrics"],
            uniform=saved["uniform"],
            episodes=saved["episodes"],
            evaluations=saved["evaluations"],
            cache_hits=saved["cache_hits"],
            wall_seconds=saved["wall_seconds"],
            metric=saved["budget"]["metric"],
            budget=saved["budget"]["fraction"],
            proxy=saved["proxy"],
            search=saved.get("search", {}),
            best_per_budget=saved.get("best_per_budget", []),
            parts=saved.get("parts", []),
        )
    except (KeyError, TypeError):
        raise UserError(f"{folder / SUMMARY_FILE} is not a run summary: {fix}") from None


def summary(result: SearchResult, config: RunConfig) -> dict[str, Any]:
    """The content of ``summary.json``."""
    return {
        "format": "mpq_rl.summary/1",
        "best": result.best,
        "fp32": {"test_metrics": result.fp32_test},
        "uniform": result.uniform,
        "budget": {"metric": result.metric, "fraction": result.budget, "enforcement": config.budget.enforcement},
        "proxy": result.proxy,
        "agent": config.agent.name,
        "seed": config.seed,
        "episodes": result.episodes,
        "evaluations": result.evaluations,
        "cache_hits": result.cache_hits,
        "wall_seconds": round(result.wall_seconds, 3),
        "search": result.search,
        "best_per_budget": result.best_per_budget,
        "parts": result.parts,
        "versions": versions(),
    }
