"""The search loop: run folder contents, TensorBoard events, resume, same-seed determinism and the CLI."""

import csv
import json
import shutil

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mpq_rl.cli import EXIT_INTERRUPTED, EXIT_USER_ERROR, main
from mpq_rl.config import load_config, parse_config
from mpq_rl.hardware import build_cost_table
from mpq_rl.quantization.policy import load_policy
from mpq_rl.runs import logger as tb_logger
from mpq_rl.runs.assembly import load_workload
from mpq_rl.runs.recorder import Recorder
from mpq_rl.runs.run_folder import run_config
from mpq_rl.runs.trainer import SearchInterrupted, run_search
from mpq_rl.search.evaluator import EvaluationCache, Evaluator

EPISODES = 12
INTERRUPT_AT = 5
BUDGET = 0.3
HISTOGRAM_WINDOW = 5


def small_config(folder, episodes: int = EPISODES, **agent):
    """A quick DDPG search on the digits CNN: BOPs budget, few candidates, min-max ranges, a short warm-up."""
    return parse_config(
        {
            "hardware": {"preset": "bops", "metric": "bops"},
            "budget": BUDGET,
            "quantization": {
                "weight_bits": [2, 4, 8],
                "activation_bits": [4, 8],
                "weight_range": "minmax",
                "activation_range": "minmax",
            },
            "agent": {
                "name": "ddpg",
                "episodes": episodes,
                "kwargs": {"warmup_episodes": 3, "buffer_size": 200, "batch_size": 16, "checkpoint_every": 4},
                **agent,
            },
            "output": str(folder),
        }
    )


def rows(folder) -> list[dict[str, str]]:
    with (folder / "episodes.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def finished(digits_model, tmp_path_factory):
    """One complete search (and its result), shared by the output checks."""
    folder = tmp_path_factory.mktemp("search") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tb_logger, "HISTOGRAM_WINDOW", HISTOGRAM_WINDOW)
        result = run_search(small_config(folder), progress=False)
    return folder, result


def interrupt_at(monkeypatch, episodes: int) -> None:
    """Make the recorder raise KeyboardInterrupt (as Ctrl-C would) right after writing episode ``episodes``."""
    original = Recorder.__call__

    def interrupting(self, episode):
        original(self, episode)
        if self.count == episodes:
            raise KeyboardInterrupt

    monkeypatch.setattr(Recorder, "__call__", interrupting)


def test_run_folder_holds_every_result(finished, digits_workload):
    folder, result = finished
    for name in ("config.yaml", "episodes.csv", "policy.json", "pareto.json", "summary.json", "evaluations.json"):
        assert (folder / name).is_file(), name
    table = rows(folder)
    assert [int(r["episode"]) for r in table] == list(range(1, EPISODES + 1))
    assert result.episodes == EPISODES and result.evaluations + result.cache_hits == EPISODES
    assert load_config(folder / "config.yaml") == small_config(folder)

    # The best policy is the highest-reward in-budget episode, and its recomputed cost fits the budget.
    config = small_config(folder)
    best_row = max((r for r in table if r["within_budget"] == "true"), key=lambda r: float(r["reward"]))
    policy = load_policy(folder / "policy.json")
    assert policy == {n: (int(best_row[f"w:{n}"]), int(best_row[f"a:{n}"])) for n in policy}
    costs = build_cost_table(digits_workload.layers, config.hardware)
    assert costs.ratios(policy)["bops"] <= BUDGET * (1 + 1e-9)

    summary = json.loads((folder / "summary.json").read_text())
    assert summary["best"]["episode"] == int(best_row["episode"])
    assert 0.0 <= summary["best"]["test_metrics"]["top1"] <= 1.0
    assert summary["fp32"]["test_metrics"]["top1"] > 0.9
    uniform = {(u["w_bits"], u["a_bits"]) for u in summary["uniform"]}
    assert uniform == {(2, 4), (4, 4), (2, 8)}  # the uniform settings at or under 0.3 of W8A8 BOPs
    assert all(u["cost_ratio"]["bops"] <= BUDGET + 1e-9 for u in summary["uniform"])
    # ... each with its calibration proxy (what comparisons choose the best uniform setting by), not its test score
    workload = load_workload(config)
    evaluator = Evaluator(workload)
    for u in summary["uniform"]:
        calibration = evaluator.evaluate(workload.uniform(u["w_bits"], u["a_bits"]))
        assert u["proxy"] == u["metrics"]["top1"] == pytest.approx(calibration["top1"])
    assert [u["proxy"] for u in summary["uniform"]] != [u["test"]["top1"] for u in summary["uniform"]]

    points = json.loads((folder / "pareto.json").read_text())["points"]
    for p in points:
        assert not any(q["proxy"] >= p["proxy"] and q["cost_ratio"] < p["cost_ratio"] for q in points if q is not p)


def test_tensorboard_events(finished):
    folder, result = finished
    events = EventAccumulator(str(folder / "tb"), size_guidance={"scalars": 0, "images": 0, "histograms": 0})
    events.Reload()
    tags = events.Tags()
    steps = list(range(1, EPISODES + 1))
    for tag in ("episode/reward", "proxy/top1", "cost/bops", "cost_ratio/bops", "cost_ratio/latency"):
        assert [e.step for e in events.Scalars(tag)] == steps, tag
    first_best = min(int(r["episode"]) for r in rows(folder) if r["within_budget"] == "true")
    assert [e.step for e in events.Scalars("best/reward")] == steps[first_best - 1 :]
    assert events.Scalars("best/reward")[-1].value == pytest.approx(result.best["reward"])

    improvements, best = [], None
    for r in rows(folder):
        if r["within_budget"] == "true" and (best is None or float(r["reward"]) > best):
            best = float(r["reward"])
            improvements.append(int(r["episode"]))
    assert [e.step for e in events.Images("best/bits")] == improvements
    assert [e.step for e in events.Histograms("bits/weights")] == [5, 10]
    assert "train/critic_loss" in tags["scalars"] and "train/actor_loss" in tags["scalars"]
    assert set(events.PluginTagToContent("hparams")) == {
        "_hparams_/experiment",
        "_hparams_/session_start_info",
        "_hparams_/session_end_info",
    }
    assert list(events.PluginTagToContent("custom_scalars")) == ["custom_scalars__config__"]


def test_same_seed_gives_the_same_episodes_and_a_replayed_resume(finished, tmp_path, monkeypatch):
    reference = (finished[0] / "episodes.csv").read_text()
    folder = tmp_path / "run"
    interrupt_at(monkeypatch, INTERRUPT_AT)
    with pytest.raises(SearchInterrupted, match=f"after {INTERRUPT_AT} episodes; resume with: .*--resume"):
        run_search(small_config(folder), progress=False)
    written = (folder / "episodes.csv").read_text()
    assert reference.startswith(written) and len(written.splitlines()) == INTERRUPT_AT + 1

    # Without the RL checkpoint the agent re-runs from its seed: the first episodes replay from the cache and are
    # not written again, the rest continue exactly as in the uninterrupted run.
    monkeypatch.undo()
    shutil.rmtree(folder / "checkpoint")
    result = run_search(None, resume=folder, progress=False)
    assert (folder / "episodes.csv").read_text() == reference
    assert result.episodes == EPISODES


def test_resume_continues_from_the_checkpoint_and_evaluates_no_policy_twice(finished, tmp_path, monkeypatch):
    folder = tmp_path / "run"
    interrupt_at(monkeypatch, INTERRUPT_AT)
    with pytest.raises(SearchInterrupted):
        run_search(small_config(folder, episodes=8), progress=False)
    monkeypatch.undo()
    assert json.loads((folder / "checkpoint" / "state.json").read_text())["episodes"] == INTERRUPT_AT
    evaluated_before = set(EvaluationCache.load(folder / "evaluations.json").entries)

    misses: list[str] = []
    original_get = EvaluationCache.get

    def counting_get(self, key):
        found = original_get(self, key)
        if found is None:
            misses.append(key)
        return found

    monkeypatch.setattr(EvaluationCache, "get", counting_get)
    config = run_config(folder).with_overrides(**{"agent.episodes": EPISODES})
    result = run_search(config, resume=folder, progress=False)

    table = rows(folder)
    assert [int(r["episode"]) for r in table] == list(range(1, EPISODES + 1))
    assert table[:INTERRUPT_AT] == rows(finished[0])[:INTERRUPT_AT]
    assert not set(misses) & evaluated_before
    assert len(misses) == len(set(misses)) == result.parts[-1]["evaluations"]
    assert len(evaluated_before) + len(misses) == len(EvaluationCache.load(folder / "evaluations.json"))
    assert result.evaluations == len(EvaluationCache.load(folder / "evaluations.json"))  # the run's total
    assert json.loads((folder / "summary.json").read_text())["episodes"] == EPISODES


def test_parallel_environments(digits_model, tmp_path):
    folder = tmp_path / "run"
    result = run_search(small_config(folder, episodes=4, n_envs=2), progress=False)
    assert len(rows(folder)) == 4 and result.episodes == 4
    cache = EvaluationCache.load(folder / "evaluations.json")
    assert len(cache) == len({tuple(r[k] for k in r if k[:2] in ("w:", "a:")) for r in rows(folder)})


def test_cli_search_prints_the_results_and_the_tensorboard_command(digits_model, tmp_path, capsys):
    folder = tmp_path / "run"
    config_file = tmp_path / "config.yaml"
    config_file.write_text(small_config(folder).to_yaml())
    args = ["search", "--config", str(config_file), "--episodes", "3", "--output", str(folder), "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"tensorboard --logdir {folder / 'tb'}" in out
    assert "searched (best)" in out and "FP32" in out and "uniform W4A4" in out
    assert len(rows(folder)) == 3


def test_cli_interrupt_exits_130_with_the_resume_command(digits_model, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "run"
    config_file = tmp_path / "config.yaml"
    config_file.write_text(small_config(folder, episodes=4).to_yaml())
    interrupt_at(monkeypatch, 2)
    assert main(["search", "--config", str(config_file), "--no-progress"]) == EXIT_INTERRUPTED
    err = capsys.readouterr().err.strip()
    assert err == f"mpq-rl: interrupted after 2 episodes; resume with: mpq-rl search --resume {folder}"
    monkeypatch.undo()
    assert main(["search", "--config", str(config_file), "--no-progress"]) == EXIT_USER_ERROR
    assert "holds an unfinished run: resume it with --resume" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--agent", "nope"], "unknown agent 'nope'"),
        (["--resume", "{tmp}"], "is not a run folder"),
        (["--episodes", "0"], "agent.episodes"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert main(["search", "--output", str(tmp_path / "run"), "--no-progress", *args]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mpq-rl: error:") and message in err


def test_budget_conditioned_search_reports_the_best_policy_of_every_budget(digits_model, tmp_path):
    config = small_config(
        tmp_path / "front",
        episodes=30,
        name="mbppo",
        kwargs={"budgets": [0.2, 0.5], "prior_episodes": 16, "model_episodes": 16, "candidates": 8},
    )
    result = run_search(config, progress=False)
    summary = json.loads((tmp_path / "front" / "summary.json").read_text())
    assert [item["budget"] for item in summary["best_per_budget"]] == [0.2, BUDGET, 0.5]
    proxies = []
    for item in summary["best_per_budget"]:
        assert item["cost_ratio"] <= item["budget"] * (1 + 1e-9)
        assert 0.0 <= item["test"]["top1"] <= 1.0
        proxies.append(item["proxy"])
    assert proxies == sorted(proxies)  # a larger budget never does worse
    assert summary["best_per_budget"][1]["proxy"] == result.best["proxy"]
    assert summary["search"]["sensitivity_seconds"] > 0
    assert 0 < summary["search"]["evaluation_seconds"] < summary["wall_seconds"]
    assert "best within 0.5" in result.report()


def test_progress_away_from_a_terminal_is_a_few_lines(digits_model, tmp_path, capsys, monkeypatch):
    from mpq_rl.runs import progress

    monkeypatch.setattr(progress, "PROGRESS_SECONDS", 3600.0)
    config = small_config(tmp_path / "run", episodes=40, name="random", kwargs={})
    run_search(config, progress=True)  # stderr is captured here, not a terminal
    started, *lines = capsys.readouterr().err.splitlines()
    assert started.startswith("search: random started, 0/40 episodes, wall ")
    assert len(lines) == 10, lines  # one per 10% of the run, no bar redrawn
    assert all(line.startswith("search: ") and "episodes (" in line for line in lines)
    assert lines[0].startswith("search: 4/40 episodes (10%), best reward ")
    assert lines[-1].startswith("search: 40/40 episodes (100%), best reward ") and " of W8A8, " in lines[-1]


def test_time_left_leaves_out_the_first_episode_and_its_one_off_work(capsys, monkeypatch):
    from types import SimpleNamespace

    from mpq_rl.runs import progress

    clock = [0.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    bar = progress.SearchProgress(total=5, initial=0, enabled=True, proxy="top1", metric="latency")
    nobody = SimpleNamespace(best=None)  # what the bar reads of the recorder
    for number, at in [(1, 1000.0), (2, 1002.0), (3, 1004.0)]:  # 1000 s of Hessians, then 2 s per episode
        clock[0] = at
        bar(number, {}, nobody, False)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].endswith(", 1000 s")  # no estimate from one episode
    assert lines[1].endswith(", 1002 s, about 6 s left") and lines[2].endswith(", about 4 s left")
