"""The run folder against an adversary and against accidents: planted pickles are never loaded, a foreign folder is
never touched, a second process is refused, a refused start leaves nothing behind, files get the umask's
permissions, and files that are not what the run wrote stop a resume with one line and exit status 2."""

import base64
import contextlib
import dataclasses
import hashlib
import io
import json
import os
import pickle
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from test_trainer import rows, small_config

import mpq_rl
from mpq_rl import safe_files
from mpq_rl.cli import EXIT_USER_ERROR, main
from mpq_rl.errors import UserError
from mpq_rl.io import atomic_write_text
from mpq_rl.runs import trainer
from mpq_rl.runs.recorder import Recorder
from mpq_rl.runs.run_folder import LOCK_FILE, MANIFEST_FILE, exclusive
from mpq_rl.runs.summary import finished_result
from mpq_rl.runs.trainer import run_search

EPISODES = 8
CHECKPOINT_AT = 4
KILLED_AT = 6
UMASK = 0o002


class Killed(BaseException):
    """A stand-in for kill -9: not a KeyboardInterrupt, so the run saves nothing on its way out."""


class Touch:
    """Unpickling this creates the file ``path``: the stand-in for arbitrary code in a planted pickle."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture(scope="module")
def killed(digits_model, tmp_path_factory) -> Path:
    """A DDPG run killed after episode 6, its last checkpoint at episode 4, made under umask 002."""
    folder = tmp_path_factory.mktemp("killed") / "run"
    original = Recorder.__call__

    def dying(self, episode):
        original(self, episode)
        if self.count == KILLED_AT:
            raise Killed

    config = small_config(folder, episodes=EPISODES)
    config = config.with_overrides(**{"agent.kwargs": {**config.agent.kwargs, "checkpoint_every": CHECKPOINT_AT}})
    with pytest.MonkeyPatch.context() as patch, umask(UMASK), pytest.raises(Killed):
        patch.setattr(Recorder, "__call__", dying)
        patch.setattr(trainer, "CHECKPOINT_EVERY", CHECKPOINT_AT)  # the evaluator cache is saved at episode 4
        run_search(config, progress=False)
    return folder


@pytest.fixture
def run(killed, tmp_path) -> Path:
    """A copy of the killed run to resume or tamper with."""
    return Path(shutil.copytree(killed, tmp_path / "run"))


def resume(folder: Path, capsys) -> tuple[int, str]:
    code = main(["search", "--resume", str(folder), "--no-progress"])
    return code, capsys.readouterr().err


def assert_one_line_error(code: int, err: str, *words: str) -> None:
    assert code == EXIT_USER_ERROR, err
    assert err.startswith("mpq-rl: error: ") and err.count("\n") == 1, err
    for word in words:
        assert word in err, err


def state(folder: Path) -> dict:
    return json.loads((folder / "checkpoint" / "state.json").read_text())


def checkpoint_file(folder: Path, role: str) -> Path:
    return folder / "checkpoint" / state(folder)["files"][role]["name"]


def replace_file(folder: Path, role: str, data: bytes) -> None:
    """Put ``data`` in the place of a checkpoint file and record its digest, as an adversary who read the code
    would."""
    checkpoint_file(folder, role).write_bytes(data)
    saved = state(folder)
    saved["files"][role]["sha256"] = hashlib.sha256(data).hexdigest()
    (folder / "checkpoint" / "state.json").write_text(json.dumps(saved))


def sb3_zip_with_payload(marker: Path) -> bytes:
    """A ``model.zip`` as SB3 writes it, whose ``data`` holds a ``:serialized:`` field that creates ``marker``."""
    serialized = base64.b64encode(pickle.dumps(Touch(marker))).decode()
    data = {"exploration": {":type:": "<class 'TruncatedNormalNoise'>", ":serialized:": serialized}}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("data", json.dumps(data))
        archive.writestr("_stable_baselines3_version", "2.9.2")
    return buffer.getvalue()


def test_the_planted_payloads_would_run_if_unpickled(tmp_path):
    """The payloads below are real: unpickled, each creates its marker file."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(Touch(marker)))
    assert marker.exists()
    marker.unlink()
    serialized = json.loads(zipfile.ZipFile(io.BytesIO(sb3_zip_with_payload(marker))).read("data"))
    pickle.loads(base64.b64decode(serialized["exploration"][":serialized:"]))
    assert marker.exists()


# -- resume never executes code from the run folder ---------------------------------------------------------------


def test_resume_ignores_planted_pickles_and_continues_from_the_checkpoint(run, tmp_path, capsys):
    marker = tmp_path / "ran"
    (run / "checkpoint" / "model.zip").write_bytes(sb3_zip_with_payload(marker))
    (run / "checkpoint" / "replay_buffer.pkl").write_bytes(pickle.dumps(Touch(marker)))
    code, err = resume(run, capsys)
    assert code == 0, err
    assert not marker.exists()
    assert [int(r["episode"]) for r in rows(run)] == list(range(1, EPISODES + 1))
    assert state(run)["episodes"] == EPISODES


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        pytest.param("npz_object_array", "is not an .npz archive of plain arrays", id="object array in the npz"),
        pytest.param("npz_is_a_pickle", "is not an .npz archive of plain arrays", id="pickle as the npz"),
        pytest.param("parameters_torch_save", "is not a safetensors file", id="torch.save as the parameters"),
        pytest.param("swap_without_digest", "does not match the digest in state.json", id="digest not updated"),
        pytest.param("old_format", "older mpq_rl (pickled, so never loaded)", id="checkpoint of an older mpq_rl"),
    ],
)
def test_a_tampered_checkpoint_is_refused_and_never_unpickled(run, tmp_path, capsys, tamper, message):
    marker = tmp_path / "ran"
    payload = pickle.dumps(Touch(marker))
    if tamper == "npz_object_array":
        buffer = io.BytesIO()
        np.savez(buffer, observations=np.array([Touch(marker)], dtype=object))
        replace_file(run, "replay_buffer", buffer.getvalue())
    elif tamper == "npz_is_a_pickle":
        replace_file(run, "replay_buffer", payload)
    elif tamper == "parameters_torch_save":
        buffer = io.BytesIO()
        torch.save({"policy": Touch(marker)}, buffer)
        replace_file(run, "parameters", buffer.getvalue())
    elif tamper == "swap_without_digest":
        checkpoint_file(run, "replay_buffer").write_bytes(payload)
    else:  # what an older mpq_rl wrote: model.zip, replay_buffer.pkl and a state.json without a format
        (run / "checkpoint" / "model.zip").write_bytes(sb3_zip_with_payload(marker))
        (run / "checkpoint" / "replay_buffer.pkl").write_bytes(payload)
        (run / "checkpoint" / "state.json").write_text(json.dumps({"algorithm": "ddpg", "episodes": CHECKPOINT_AT}))
    before = (run / "episodes.csv").read_bytes()
    assert_one_line_error(*resume(run, capsys), message, "delete the checkpoint folder")
    assert not marker.exists()
    assert (run / "episodes.csv").read_bytes() == before


# -- files that are not what the run wrote ------------------------------------------------------------------------


def _cut_last_row(text: str) -> str:
    return text[: text.rindex("\n", 0, len(text) - 1) + 40]


def _reward_word(text: str) -> str:
    lines = text.splitlines(keepends=True)
    cells = lines[3].split(",")
    cells[1] = "high"
    lines[3] = ",".join(cells)
    return "".join(lines)


def _metric_as_text(text: str) -> str:
    data = json.loads(text)
    first = next(iter(data["entries"].values()))
    first["top1"] = "high"
    return json.dumps(data)


def _row_twice(text: str) -> str:
    lines = text.splitlines(keepends=True)
    return "".join(lines[:3] + lines[2:])


@pytest.mark.parametrize(
    ("name", "corrupt", "message"),
    [
        ("checkpoint/state.json", lambda text: text[:50], "state.json is not valid JSON"),
        (
            "checkpoint/state.json",
            lambda text: text.replace('"episodes": 4', '"episodes": "4"'),
            "not a valid checkpoint state (episodes",
        ),
        ("checkpoint/state.json", lambda text: "[1, 2]", "not a valid checkpoint state"),
        ("evaluations.json", lambda text: text[: len(text) // 2], "evaluations.json is not valid JSON"),
        ("evaluations.json", _metric_as_text, "entry 1 is not metric names and numbers"),
        ("evaluations.json", lambda text: '{"format": "mpq_rl.evaluations/1", "entries": []}', "unknown format"),
        ("episodes.csv", _reward_word, "line 4: not episode 3's row"),
        ("episodes.csv", _row_twice, "line 4: not episode 3's row"),
        ("episodes.csv", lambda text: "episode,reward\n1,0.5\n", "has other columns than this run writes"),
    ],
    ids=[
        "state cut short",
        "state count as text",
        "state not a mapping",
        "cache cut short",
        "cache metric as text",
        "cache entries a list",
        "episodes reward as text",
        "episodes row twice",
        "episodes foreign columns",
    ],
)
def test_a_corrupt_file_stops_the_resume_with_one_line(run, capsys, name, corrupt, message):
    path = run / name
    path.write_text(corrupt(path.read_text()))
    assert_one_line_error(*resume(run, capsys), str(path), message)


def test_a_file_that_is_not_utf8_is_one_line(run, capsys):
    (run / "evaluations.json").write_bytes(b"\xff\xfe\x00{")
    assert_one_line_error(*resume(run, capsys), "evaluations.json is not UTF-8 text")


def test_a_corrupt_summary_is_one_line_for_compare(run, capsys):
    assert resume(run, capsys)[0] == 0
    assert finished_result(run).episodes == EPISODES
    (run / "summary.json").write_text('{"best": null}')
    with pytest.raises(UserError, match="summary.json is not a run summary: delete it, and the next compare"):
        finished_result(run)


# -- a folder that is not a run, and refused starts ---------------------------------------------------------------


def _content(path: Path, mode: int) -> bytes | str | None:
    if stat.S_ISLNK(mode):
        return os.readlink(path)
    return path.read_bytes() if stat.S_ISREG(mode) else None


def snapshot(folder: Path) -> dict[str, tuple[bytes | str | None, int]]:
    """Every path under ``folder`` with its bytes (None for folders, the target for links, never read through them;
    nothing for FIFOs) and mode."""
    found = {}
    for root, folders, files in os.walk(folder):
        for name in folders + files:
            path = Path(root) / name
            mode = path.lstat().st_mode
            found[str(path.relative_to(folder))] = (_content(path, mode), mode)
    return dict(sorted(found.items()))


def test_a_foreign_folder_is_refused_and_untouched(digits_model, tmp_path, capsys):
    folder = tmp_path / "mine"
    (folder / "checkpoint").mkdir(parents=True)
    (folder / "tb").mkdir()
    (folder / "config.yaml").write_text("my: own config\n")
    (folder / "summary.json").write_text('{"mine": true}\n')
    (folder / "episodes.csv").write_text("my,own\n1,2\n")
    (folder / "checkpoint" / "weights.bin").write_bytes(b"\x00\x01")
    (folder / "tb" / "notes.txt").write_text("keep me\n")
    before = snapshot(folder)
    code = main(["search", "--output", str(folder), "--agent", "random", "--episodes", "2", "--no-progress"])
    assert_one_line_error(code, capsys.readouterr().err, "is not an mpq_rl run folder", MANIFEST_FILE)
    assert snapshot(folder) == before

    code = main(["compare", "--agents", "random", "--episodes", "2", "--output", str(folder), "--no-progress"])
    assert_one_line_error(
        code, capsys.readouterr().err, "holds 'checkpoint', which is not part of an mpq-rl comparison"
    )
    assert snapshot(folder) == before

    a_file = tmp_path / "results.txt"
    a_file.write_text("mine\n")
    code = main(["search", "--output", str(a_file), "--agent", "random", "--episodes", "2", "--no-progress"])
    assert_one_line_error(code, capsys.readouterr().err, "is a file, not a folder")
    assert a_file.read_text() == "mine\n"
    code = main(["export", "--policy", str(tmp_path / "policy.json"), "--output", str(folder)])
    assert_one_line_error(code, capsys.readouterr().err, "is a folder: give the path of the file to write")
    code = main(["export", "--policy", str(tmp_path / "policy.json"), "--output", str(a_file / "model.onnx")])
    assert_one_line_error(code, capsys.readouterr().err, "results.txt is a file, not a folder")
    assert snapshot(folder) == before and a_file.read_text() == "mine\n"


@pytest.mark.parametrize(
    ("config", "flags", "message"),
    [
        ({}, ["--budget", "0.001"], "cannot be met"),
        ({"model": {"name": "no_such_model"}}, [], "unknown model.name"),
        ({"model": {"name": None, "factory": "no_such_package.models:build"}}, [], "no_such_package"),
        ({"agent": {"name": "ddpg", "kwargs": {"learning_rat": 0.1}}}, [], "unknown key 'learning_rat'"),
        ({"agent": {"name": "random", "kwargs": {"nope": 1}}}, [], "unknown key 'nope'"),
        ({}, ["--agent", "nope"], "unknown agent 'nope'"),
        ({}, ["--episodes", "0"], "agent.episodes"),
    ],
    ids=["impossible budget", "unknown model", "missing factory", "ddpg kwarg", "random kwarg", "agent", "episodes"],
)
def test_a_refused_start_leaves_nothing_behind(digits_model, tmp_path, capsys, config, flags, message):
    config_file = tmp_path / "config.yaml"
    config_file.write_text(json.dumps({"hardware": {"preset": "bops", "metric": "bops"}, "budget": 0.3, **config}))
    new, empty = tmp_path / "new" / "run", tmp_path / "empty"
    empty.mkdir()
    for folder in (new, empty):
        args = ["search", "--config", str(config_file), "--output", str(folder), "--no-progress", *flags]
        assert_one_line_error(main(args), capsys.readouterr().err, message)
    assert not (tmp_path / "new").exists()
    assert list(empty.iterdir()) == []


def test_the_fixed_command_works_after_a_refused_start(digits_model, tmp_path, capsys):
    folder = tmp_path / "run"
    args = ["search", "--output", str(folder), "--agent", "random", "--episodes", "2", "--no-progress"]
    assert_one_line_error(main([*args, "--budget", "0.001"]), capsys.readouterr().err, "cannot be met")
    assert main([*args, "--budget", "0.3"]) == 0
    assert len(rows(folder)) == 2
    assert json.loads((folder / MANIFEST_FILE).read_text())["format"] == "mpq_rl.run/1"
    assert main([*args, "--budget", "0.5"]) == 0  # a finished run of ours is replaced
    assert "replacing the finished run" in capsys.readouterr().err


# -- one process per folder ---------------------------------------------------------------------------------------


def _env() -> dict[str, str]:
    """This environment, with this checkout of mpq_rl first on the path of a child process."""
    root = str(Path(mpq_rl.__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}


@contextlib.contextmanager
def held_by_another_process(folder: Path):
    """Another process holding ``folder``'s lock until the block ends; yields its pid."""
    code = "import sys\nfrom mpq_rl.runs.run_folder import exclusive\nwith exclusive(sys.argv[1]):\n"
    code += "    print('held', flush=True)\n    sys.stdin.read()\n"
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=_env()
    )
    try:
        assert child.stdout.readline().strip() == "held"
        yield child.pid
    finally:
        child.stdin.close()
        child.wait(timeout=60)


def test_a_second_process_on_a_folder_in_use_is_refused(run, tmp_path, capsys):
    before = snapshot(run)
    with held_by_another_process(run) as pid:
        assert_one_line_error(*resume(run, capsys), f"{run} is in use by another mpq-rl process (pid {pid})")
        compare = tmp_path / "compare"
        with held_by_another_process(compare / "random-seed0"):
            code = main(["compare", "--agents", "random", "--episodes", "2", "--output", str(compare), "--no-progress"])
            assert_one_line_error(code, capsys.readouterr().err, "random-seed0 is in use by another mpq-rl process")
    lock = {LOCK_FILE}
    assert {k: v for k, v in snapshot(run).items() if k not in lock} == {
        k: v for k, v in before.items() if k not in lock
    }

    # ... and the command line in a second process, while this one holds the folder.
    with exclusive(run):
        child = subprocess.run(
            [sys.executable, "-m", "mpq_rl", "search", "--resume", str(run), "--no-progress"],
            capture_output=True,
            text=True,
            env=_env(),
            timeout=600,
        )
    *said, error = child.stderr.splitlines()  # what the command was doing, then the one-line error
    assert said[0] == f"mpq-rl: search: loading PyTorch and {run}"
    assert_one_line_error(child.returncode, error + "\n", f"in use by another mpq-rl process (pid {os.getpid()})")

    # The lock goes with the process that held it.
    assert resume(run, capsys)[0] == 0


# -- a resumed run is the same run ----------------------------------------------------------------------------------


def scalar_steps(folder: Path) -> dict[str, list[int]]:
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    events = EventAccumulator(str(folder / "tb"), size_guidance={SCALARS: 0}).Reload()
    return {tag: [event.step for event in events.Scalars(tag)] for tag in events.Tags()[SCALARS]}


def test_a_resumed_run_is_consistent_and_counts_every_part(run, capsys):
    # kill -9 just after episode 6 became the best: policy.json names an episode that the resume redoes
    last = rows(run)[-1]
    stale = json.loads((run / "policy.json").read_text())
    stale["episode"] = int(last["episode"])
    (run / "policy.json").write_text(json.dumps(stale))
    before = json.loads((run / MANIFEST_FILE).read_text())["parts"]
    assert len(before) == 1 and before[0]["evaluations"] > 0  # brought up to date at the save of episode 4

    code, err = resume(run, capsys)
    assert code == 0, err
    summary = json.loads((run / "summary.json").read_text())
    policy = json.loads((run / "policy.json").read_text())
    assert policy["episode"] == summary["best"]["episode"]
    row = rows(run)[policy["episode"] - 1]
    assert {layer["name"]: [layer["w_bits"], layer["a_bits"]] for layer in policy["layers"]} == {
        name: [int(row[f"w:{name}"]), int(row[f"a:{name}"])] for name in summary["best"]["policy"]
    }
    parts = summary["parts"]
    assert [(p["after_episode"], p["redone"]) for p in parts] == [(0, 0), (CHECKPOINT_AT, KILLED_AT - CHECKPOINT_AT)]
    assert summary["evaluations"] == sum(p["evaluations"] for p in parts) > parts[1]["evaluations"]
    assert summary["wall_seconds"] == pytest.approx(sum(p["wall_seconds"] for p in parts), abs=0.01)
    assert json.loads((run / MANIFEST_FILE).read_text())["parts"] == parts

    steps = scalar_steps(run)
    assert steps["episode/reward"] == list(range(1, EPISODES + 1))  # each episode once, none from the killed part
    losses = [tag for tag in steps if tag.startswith("train/")]
    assert losses and all(max(steps[tag]) <= EPISODES for tag in losses)  # agent losses against episodes too
    assert steps["best/test_top1"] == [EPISODES]  # the held-out result, also the HParams metric


@pytest.mark.parametrize(("agent", "kill_at"), [("random", 1), ("random", 5), ("ddpg", 1), ("ddpg", 5)])
def test_kill_at_any_point_then_resume_gives_one_consistent_run(digits_model, tmp_path, agent, kill_at):
    """kill -9 before the first save (episode 1) or after it (episode 5, checkpoint and cache at 4), then resume."""
    config = small_config(tmp_path / "run", episodes=EPISODES)  # ddpg, checkpoint every 4 episodes
    if agent == "random":
        config = config.with_overrides(**{"agent.name": "random", "agent.kwargs": {}})
    original = Recorder.__call__

    def dying(self, episode):
        original(self, episode)
        if self.count == kill_at:
            raise Killed

    with pytest.MonkeyPatch.context() as patch, pytest.raises(Killed):
        patch.setattr(Recorder, "__call__", dying)
        patch.setattr(trainer, "CHECKPOINT_EVERY", CHECKPOINT_AT)
        run_search(config, progress=False)
    result = run_search(None, resume=tmp_path / "run", progress=False)

    episodes = rows(tmp_path / "run")
    assert [int(r["episode"]) for r in episodes] == list(range(1, EPISODES + 1))
    assert scalar_steps(tmp_path / "run")["episode/reward"] == list(range(1, EPISODES + 1))
    policy = json.loads((tmp_path / "run" / "policy.json").read_text())
    assert policy["episode"] == result.best["episode"] and float(episodes[policy["episode"] - 1]["reward"]) == max(
        float(r["reward"]) for r in episodes if r["within_budget"] == "true"
    )
    if agent == "random":  # a searcher that re-runs from its seed replays the cache: the uninterrupted run exactly
        whole = run_search(config.with_overrides(output=str(tmp_path / "whole")), progress=False)
        assert (tmp_path / "run" / "episodes.csv").read_bytes() == (whole.output / "episodes.csv").read_bytes()
        assert result.evaluations == whole.evaluations


# -- permissions --------------------------------------------------------------------------------------------------


def test_files_follow_the_umask_across_a_resume(run, capsys):
    with umask(UMASK):
        code, err = resume(run, capsys)
    assert code == 0, err
    modes = {str(path.relative_to(run)): path.stat().st_mode & 0o777 for path in run.rglob("*") if path.is_file()}
    assert "episodes.csv" in modes and "summary.json" in modes and any(name.endswith(".npz") for name in modes)
    assert modes == dict.fromkeys(modes, 0o666 & ~UMASK)


def test_atomic_writes_respect_the_umask(tmp_path):
    for mask in (0o022, 0o077, 0o002):
        with umask(mask):
            atomic_write_text(tmp_path / f"{mask:o}.txt", "x")
        assert (tmp_path / f"{mask:o}.txt").stat().st_mode & 0o777 == 0o666 & ~mask


# -- bad configs, policies, weights and data: one line, exit 2, before anything is written -------------------------

QUICK = {"hardware": {"preset": "bops", "metric": "bops"}, "budget": 0.3, "agent": {"name": "random", "episodes": 2}}
LAYERS = ["stem", "block.conv1", "block.conv2", "down", "dw", "pw", "down2", "fc", "classifier"]


def yaml_file(tmp_path: Path, content: str | bytes | dict) -> Path:
    path = tmp_path / "config.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("seed: 1\nbudget: 0.3\nseed: 2\n", "line 3: key 'seed' is given twice in one mapping"),
        ("agent:\n  name: random\n  name: ddpg\n", "key 'name' is given twice"),
        ("budget: .inf\n", "key 'budget': input should be a finite number, got inf"),
        ("budget:\n  fraction: .nan\n", "key 'budget.fraction': input should be a finite number, got nan"),
        (b"seed: 1\n# caf\xe9\n", "is not UTF-8 text"),
        ({"seed": 2**32}, "key 'seed': input should be less than 4294967296"),
        ({"hardware": {"preset": "bitfusion", "overrides": {"clock_hz": 0.0}}}, "gives infinite latency"),
        (
            "hardware:\n  overrides:\n    clock_hz: .nan\n",
            "key 'hardware.overrides.clock_hz': input should be a finite number, got nan",
        ),
        (
            "hardware:\n  overrides:\n    dram_pj_per_bit: .inf\n",
            "key 'hardware.overrides.dram_pj_per_bit': input should be a finite number, got inf",
        ),
        ({"quantization": {"pin": {"first": [8, 8], "stem": [4, 4]}}}, "gives layer 'stem' twice (as 'first'"),
        ({"quantization": {"pin": {"classifier": [8, 8], "last": [4, 4]}}}, "as 'classifier' and as 'last'"),
    ],
    ids=[
        "duplicate key",
        "duplicate nested key",
        "budget inf",
        "budget nan",
        "not utf-8",
        "seed 2^32",
        "clock 0",
        "clock nan",
        "energy inf",
        "pin first and by name",
        "pin last and by name",
    ],
)
def test_a_bad_config_is_one_line(digits_model, tmp_path, capsys, content, message):
    config = yaml_file(tmp_path, content)
    assert_one_line_error(main(["cost", "--config", str(config)]), capsys.readouterr().err, message)
    folder = tmp_path / "run"
    code = main(["search", "--config", str(config), "--output", str(folder), "--no-progress"])
    assert_one_line_error(code, capsys.readouterr().err, message)
    assert not folder.exists()


def test_an_unreadable_config_or_policy_is_one_line(digits_model, tmp_path, capsys, monkeypatch):
    config, policy = yaml_file(tmp_path, "seed: 1\n"), tmp_path / "policy.json"
    policy.write_text("{}")
    os_open = os.open

    def refuse(path, *args, **kwargs):  # chmod 000 does not stop root, so refuse the open the way the OS would
        if Path(path) in (config, policy):
            raise PermissionError(13, "Permission denied")
        return os_open(path, *args, **kwargs)

    monkeypatch.setattr(safe_files.os, "open", refuse)
    assert_one_line_error(main(["cost", "--config", str(config)]), capsys.readouterr().err, "Permission denied")
    assert_one_line_error(main(["cost", "--policy", str(policy)]), capsys.readouterr().err, "Permission denied")
    assert_one_line_error(main(["cost", "--config", str(tmp_path)]), capsys.readouterr().err, "is a folder")


def _policy_text(**change) -> str:
    layers = [{"name": name, "w_bits": 8, "a_bits": 8} for name in LAYERS]
    layers[7].update(change)
    return json.dumps({"format": "mpq_rl.policy/1", "layers": layers})


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"format": "mpq_rl.policy/1", "layers": [{"name": "st\xe9m"}]}', "is not UTF-8 text"),
        (_policy_text(w_bits=8).replace('"w_bits": 8', '"w_bits": Infinity', 1), "Infinity is not a JSON number"),
        (_policy_text(w_bits=8).replace('"w_bits": 8', '"w_bits": NaN', 1), "NaN is not a JSON number"),
        (_policy_text(w_bits=8).replace('"w_bits": 8', '"w_bits": 1e400', 1), "layer 'stem' has w_bits inf"),
        ('{"format": "mpq_rl.policy/1", "layers": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
        (_policy_text(name="stem"), "layer 'stem' is listed twice"),
        (_policy_text()[:-1] + ', "format": "mpq_rl.policy/1"}', "key 'format' is given twice in one object"),
        (_policy_text(w_bits=4.7), "layer 'fc' has w_bits 4.7: bit-widths are whole numbers"),
        (_policy_text(a_bits="4"), "layer 'fc' has a_bits '4'"),
        (_policy_text(w_bits=True), "layer 'fc' has w_bits True"),
        (_policy_text(name=7), "layer names must be strings, got 7"),
        ('{"format": "mpq_rl.policy/1", "layers": {"stem": [8, 8]}}', 'expected a list of layers under "layers"'),
    ],
    ids=[
        "not utf-8",
        "Infinity",
        "NaN",
        "1e400",
        "nested 100000 deep",
        "layer twice",
        "key twice",
        "w_bits 4.7",
        "a_bits as text",
        "w_bits true",
        "name a number",
        "layers a mapping",
    ],
)
def test_a_bad_policy_is_one_line(digits_model, tmp_path, capsys, content, message):
    policy = tmp_path / "policy.json"
    if isinstance(content, bytes):
        policy.write_bytes(content)
    else:
        policy.write_text(content)
    assert_one_line_error(main(["cost", "--policy", str(policy)]), capsys.readouterr().err, message)


def test_a_whole_float_is_a_bit_width(digits_model, tmp_path, capsys):
    policy = tmp_path / "policy.json"
    policy.write_text(_policy_text(w_bits=4.0))
    assert main(["cost", "--policy", str(policy), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["layers"][7]["w_bits"] == 4


BAD_DATA = """
import torch
from torch.utils.data import TensorDataset
from mpq_rl.workloads.digits import load_digits


def digits(change):
    splits = load_digits()
    (cx, cy), (tx, ty) = ([t.clone() for t in splits[name].tensors] for name in ("calibration", "test"))
    if change == "nan input":
        cx[3, 0, 2, 2] = float("nan")
    elif change == "inf test input":
        tx[5, 0, 1, 1] = float("inf")
    elif change == "label 10":
        ty[7] = 10
    elif change == "label -1":
        cy[1] = -1
    elif change == "float labels":
        cy, ty = cy.float(), ty.float()
    elif change == "labels [n, 1]":
        cy = cy[:, None]
    elif change == "test 3 channels":
        tx = torch.zeros(len(tx), 3, 8, 8)
    elif change == "calibration 3 channels":
        cx = torch.zeros(len(cx), 3, 8, 8)
    rx, ry = (t.clone() for t in splits["train"].tensors)
    if change == "nan train input":
        rx[40, 0, 3, 3] = float("nan")
    elif change == "train label 12":
        ry[9] = 12
    return {"calibration": TensorDataset(cx, cy), "test": TensorDataset(tx, ty), "train": TensorDataset(rx, ry)}
"""


@pytest.fixture
def bad_data(tmp_path, monkeypatch):
    """A user module ``mpq_bad_data`` whose factory ``digits(change)`` returns the digits splits with one flaw."""
    (tmp_path / "mpq_bad_data.py").write_text(BAD_DATA)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "mpq_bad_data", raising=False)
    return "mpq_bad_data:digits"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("nan input", "the calibration split has NaN or infinite inputs (batch 1)"),
        ("inf test input", "the test split has NaN or infinite inputs (batch 1)"),
        ("label 10", "the test split has labels from 0 to 10, but the model has 10 output classes"),
        ("label -1", "the calibration split has labels from -1 to 9"),
        ("float labels", "the calibration split's labels are float32, not integer class ids"),
        ("labels [n, 1]", "labels must be one class id per sample, got [1] per sample"),
        ("test 3 channels", "the model cannot run the test split's first batch (RuntimeError: Given groups=1"),
        ("calibration 3 channels", "the model cannot run the calibration split's first batch"),
    ],
)
def test_bad_data_is_refused_before_the_search(digits_model, bad_data, tmp_path, capsys, change, message):
    config = yaml_file(tmp_path, {**QUICK, "data": {"factory": bad_data, "kwargs": {"change": change}}})
    folder = tmp_path / "run"
    code = main(["search", "--config", str(config), "--output", str(folder), "--no-progress"])
    assert_one_line_error(code, capsys.readouterr().err, message)
    assert not folder.exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("nan train input", "the train split has NaN or infinite inputs (batch 2)"),
        ("train label 12", "the train split has labels from 0 to 12, but the model has 10 output classes"),
    ],
)
def test_bad_train_data_is_refused_before_finetuning(digits_model, bad_data, tmp_path, capsys, change, message):
    config = yaml_file(tmp_path, {**QUICK, "data": {"factory": bad_data, "kwargs": {"change": change}}})
    policy = tmp_path / "policy.json"
    policy.write_text(_policy_text())
    folder = tmp_path / "evaluated"
    argv = ["evaluate", "--config", str(config), "--policy", str(policy), "--finetune-epochs", "1"]
    code = main([*argv, "--output", str(folder)])
    assert_one_line_error(code, capsys.readouterr().err, message)
    assert not folder.exists()


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("fc.weight", float("nan"), "'fc.weight' holds NaN or infinite values"),
        ("stem_bn.running_var", float("inf"), "'stem_bn.running_var' holds NaN or infinite values"),
        ("fc.bias", [1.0, 2.0], "'fc.bias' is a list, not a tensor"),
    ],
    ids=["nan weight", "inf batch-norm statistic", "a list in the state dict"],
)
def test_bad_weights_are_refused_at_load(digits_model, tmp_path, capsys, key, value, message):
    state = {name: tensor.clone() for name, tensor in digits_model.state_dict().items()}
    if isinstance(value, float):
        state[key].view(-1)[0] = value
    else:
        state[key] = value
    torch.save(state, tmp_path / "weights.pt")
    config = yaml_file(tmp_path, {**QUICK, "model": {"name": "digits_cnn", "weights": str(tmp_path / "weights.pt")}})
    folder = tmp_path / "run"
    code = main(["search", "--config", str(config), "--output", str(folder), "--no-progress"])
    assert_one_line_error(code, capsys.readouterr().err, "model.weights", message)
    assert not folder.exists()


def _no_constants(name: str):
    raise AssertionError(f"{name} in a JSON file")


def test_a_nan_reward_is_never_the_best_and_never_in_a_file(digits_model, tmp_path, monkeypatch):
    from mpq_rl.search.problem import SearchProblem

    score = SearchProblem.score

    def nan_for_the_first_two(self, choices, projected_layers=0):
        episode = score(self, choices, projected_layers)
        self.scored = getattr(self, "scored", 0) + 1
        if self.scored <= 2:
            nan = float("nan")
            metrics = dict.fromkeys(episode.metrics, nan)
            episode = dataclasses.replace(episode, reward=nan, proxy=nan, within_budget=True, metrics=metrics)
        return episode

    monkeypatch.setattr(SearchProblem, "score", nan_for_the_first_two)
    config = parse_quick(tmp_path / "run", episodes=5)
    result = run_search(config, progress=False)
    assert result.best is not None and result.best["episode"] > 2
    for name in ("summary.json", "policy.json", "pareto.json", "evaluations.json"):
        data = json.loads((tmp_path / "run" / name).read_text(), parse_constant=_no_constants)
        assert data
    pareto = json.loads((tmp_path / "run" / "pareto.json").read_text())
    assert all(point["episode"] > 2 for point in pareto["points"])


def parse_quick(folder: Path, episodes: int):
    from mpq_rl.config import parse_config

    return parse_config({**QUICK, "agent": {"name": "random", "episodes": episodes}, "output": str(folder)})


# -- cost, evaluate and export read a run folder ------------------------------------------------------------------


def test_cost_evaluate_and_export_read_a_run_folder(run, tmp_path, capsys):
    policy = run / "policy.json"
    assert main(["cost", "--config", str(run / "config.yaml"), "--policy", str(policy), "--json"]) == 0
    expected = capsys.readouterr().out
    assert main(["cost", "--run", str(run), "--json"]) == 0
    assert capsys.readouterr().out == expected
    assert main(["cost", "--policy", str(policy), "--json"]) == 0  # the folder's config, not the default one
    out, err = capsys.readouterr()
    assert out == expected and f"using {run / 'config.yaml'}, the config of the run that holds {policy}" in err

    assert main(["evaluate", "--run", str(run)]) == 0
    assert f"policy {policy}, " in capsys.readouterr().out
    assert main(["export", "--run", str(run), "--output", str(tmp_path / "model.onnx")]) == 0
    assert (tmp_path / "model.onnx").is_file()

    both = ["cost", "--run", str(run), "--config", str(run / "config.yaml")]
    assert_one_line_error(main(both), capsys.readouterr().err, "give --run DIR or --config FILE, not both")
    assert_one_line_error(main(["evaluate"]), capsys.readouterr().err, "give --policy FILE, or --run DIR")
    assert_one_line_error(main(["cost", "--run", str(tmp_path)]), capsys.readouterr().err, "is not a run folder")
    policy.unlink()
    assert_one_line_error(
        main(["export", "--run", str(run), "--output", "x.onnx"]), capsys.readouterr().err, "no policy.json"
    )


# -- issue 26: links, FIFOs and forged files never turn a run folder against its user --------------------------------


@pytest.fixture
def outside(tmp_path) -> Path:
    """A folder of the user's own, outside every run folder: a file and another run's files."""
    folder = tmp_path / "outside"
    (folder / "other").mkdir(parents=True)
    (folder / "notes.txt").write_text("my notes\n")
    (folder / "other" / "episodes.csv").write_text("episode,reward\n1,0.5\n")
    (folder / "other" / "parameters-0000000000000000.safetensors").write_bytes(b"theirs")
    return folder


def assert_untouched(folder: Path, before: dict) -> None:
    assert snapshot(folder) == before


def _plant(run: Path, outside: Path, entry: str) -> None:
    """Replace ``entry`` of ``run`` by a link out of it (or a FIFO), as a hostile colleague's folder would hold."""
    path = run / entry
    target = {
        "mpq_rl.lock": outside / "notes.txt",
        "dangling lock": outside / "created-by-the-lock",
        "checkpoint": outside / "other",
        "tb": outside / "other",
        "episodes.csv": outside / "other" / "episodes.csv",
        "config.yaml": outside / "notes.txt",
        "evaluations.json": outside / "notes.txt",
    }
    if entry == "dangling lock":
        path = run / LOCK_FILE
    if entry == "fifo state":
        (run / "checkpoint" / "state.json").unlink()
        os.mkfifo(run / "checkpoint" / "state.json")
        return
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
    path.symlink_to(target[entry])


LINKED = ["mpq_rl.lock", "dangling lock", "checkpoint", "tb", "episodes.csv", "config.yaml", "evaluations.json"]


@pytest.mark.parametrize("entry", [*LINKED, "fifo state"])
def test_resume_refuses_a_link_or_fifo_in_the_run_folder(run, outside, capsys, entry):
    _plant(run, outside, entry)
    before, mine = snapshot(outside), snapshot(run)
    code, err = resume(run, capsys)
    assert_one_line_error(code, err, "not a regular file or folder", "remove it")
    assert_untouched(outside, before)
    assert snapshot(run) == mine  # a refused resume changes nothing


@pytest.mark.parametrize("entry", ["mpq_rl.lock", "dangling lock", "tb", "checkpoint"])
def test_a_new_search_refuses_a_link_in_its_output(digits_model, run, outside, tmp_path, capsys, entry):
    folder = tmp_path / "new"
    folder.mkdir()
    if entry in ("tb", "checkpoint"):  # a finished run of ours, which a new search would replace
        folder = run
        (folder / "summary.json").write_text("{}")
    _plant(folder, outside, entry)
    before = snapshot(outside)
    code = main(["search", "--output", str(folder), "--agent", "random", "--episodes", "2", "--no-progress"])
    assert_one_line_error(code, capsys.readouterr().err, "not a regular file or folder")
    assert_untouched(outside, before)


def test_compare_refuses_a_linked_run_subfolder(digits_model, outside, tmp_path, capsys):
    compare = tmp_path / "compare"
    compare.mkdir()
    (compare / "random-seed0").symlink_to(outside / "other")
    before = snapshot(outside)
    code = main(["compare", "--agents", "random", "--episodes", "2", "--output", str(compare), "--no-progress"])
    assert_one_line_error(code, capsys.readouterr().err, "random-seed0 is a symbolic link")
    assert_untouched(outside, before)


def test_the_lock_is_never_opened_through_a_link(outside, tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / LOCK_FILE).symlink_to(outside / "notes.txt")
    with pytest.raises(UserError, match="mpq_rl.lock is a symbolic link"), exclusive(folder):
        pass
    assert (outside / "notes.txt").read_text() == "my notes\n"


def _forge_tensors(run: Path, change) -> None:
    from safetensors.torch import load, save

    tensors = load(checkpoint_file(run, "parameters").read_bytes())
    change(tensors)
    replace_file(run, "parameters", save(tensors))


def _forge_buffer(run: Path, change) -> None:
    with np.load(io.BytesIO(checkpoint_file(run, "replay_buffer").read_bytes())) as archive:
        arrays = {name: archive[name] for name in archive.files}
    change(arrays)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    replace_file(run, "replay_buffer", buffer.getvalue())


def _first(tensors: dict, suffix: str) -> str:
    return next(key for key in sorted(tensors) if key.endswith(suffix))


def _huge_header(run: Path) -> None:
    """An .npz whose one array's header claims 30 GB (its data is a few bytes)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (7_500_000_000,)})
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("observations.npy", b"\x93NUMPY\x01\x00" + header.getvalue()[8:] + b"\x00" * 16)
    replace_file(run, "replay_buffer", buffer.getvalue())


def _zip_bomb(run: Path) -> None:
    """An .npz of 3 MB that inflates to 1.5 GB."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": (1_500_000_000,)})
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive, archive.open("observations.npy", "w") as out:
        out.write(header.getvalue())
        for _ in range(1500):
            out.write(bytes(1_000_000))
    replace_file(run, "replay_buffer", buffer.getvalue())


def _state(change) -> callable:
    def forge(run: Path) -> None:
        saved = state(run)
        change(saved)
        (run / "checkpoint" / "state.json").write_text(json.dumps(saved) if isinstance(saved, dict) else saved)

    return forge


def _text_state(run: Path, text: str) -> None:
    (run / "checkpoint" / "state.json").write_text(text)


FORGED = {
    "nan weight": (lambda r: _forge_tensors(r, lambda t: t[_first(t, "weight")].fill_(float("nan"))), "not finite"),
    "inf replay": (lambda r: _forge_buffer(r, lambda a: a["rewards"].fill(np.inf)), "not finite"),
    "weights as bool": (
        lambda r: _forge_tensors(r, lambda t: t.update({_first(t, "weight"): t[_first(t, "weight")].bool()})),
        "not finite float32",
    ),
    "weights as int8": (
        lambda r: _forge_tensors(r, lambda t: t.update({_first(t, "weight"): t[_first(t, "weight")].to(torch.int8)})),
        "not finite float32",
    ),
    "weights as float16": (
        lambda r: _forge_tensors(r, lambda t: t.update({_first(t, "weight"): t[_first(t, "weight")].half()})),
        "not finite float32",
    ),
    "weights as float64": (
        lambda r: _forge_tensors(r, lambda t: t.update({_first(t, "weight"): t[_first(t, "weight")].double()})),
        "not finite float32",
    ),
    "counter 1e30": (
        _state(lambda s: s["counters"].update(num_timesteps=1e30)),
        "not a valid checkpoint state",
    ),
    "counter 10^13": (
        _state(lambda s: s["counters"].update(num_timesteps=10**13)),
        "not a valid checkpoint state",
    ),
    "counter of 400 digits": (
        lambda r: _text_state(r, json.dumps(state(r)).replace('"num_timesteps": ', '"num_timesteps": ' + "9" * 400)),
        "more than 40",
    ),
    "integer of 5000 digits": (
        lambda r: _text_state(r, json.dumps(state(r)).replace('"episodes": ', '"episodes": ' + "9" * 5000)),
        "more than 40",
    ),
    "generator out of range": (
        _state(lambda s: s["exploration"]["generator"]["state"].update(state=2**129)),
        "not a generator state",
    ),
    "episodes beyond the run": (_state(lambda s: s.update(episodes=100)), "covers 100 episodes but episodes.csv"),
    "header claims 30 GB": (_huge_header, "is not an .npz archive of plain arrays"),
    "zip bomb": (_zip_bomb, "is not an .npz archive of plain arrays"),
    "deep nesting": (lambda r: _text_state(r, "[" * 100_000 + "]" * 100_000), "nested too deeply"),
}


@pytest.mark.parametrize("case", list(FORGED))
def test_a_forged_checkpoint_is_refused_before_anything_is_written(run, capsys, case):
    forge, message = FORGED[case]
    forge(run)
    before = snapshot(run)
    assert_one_line_error(*resume(run, capsys), message)
    assert snapshot(run) == before


def test_forged_evaluations_are_refused(run, capsys):
    data = json.loads((run / "evaluations.json").read_text())
    next(iter(data["entries"].values()))["top1"] = 99.0
    (run / "evaluations.json").write_text(json.dumps(data))
    before = snapshot(run)
    assert_one_line_error(*resume(run, capsys), "has top1 = 99.0, outside [0.0, 1.0]")
    assert snapshot(run) == before


def test_a_row_cut_short_is_repaired_on_resume(run, capsys):
    text = (run / "episodes.csv").read_text()
    (run / "episodes.csv").write_text(_cut_last_row(text))
    code, err = resume(run, capsys)
    assert code == 0, err
    assert [int(r["episode"]) for r in rows(run)] == list(range(1, EPISODES + 1))


BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
    f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
    for i in range(8)
)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("a: " + "[" * 20_000 + "]" * 20_000 + "\n", "nested too deeply"),
        ("a: " + "{b: " * 40 + "1" + "}" * 40 + "\n", "nested over 32 deep"),
        (BOMB, "more than 100,000 values"),
        ("seed: 1\n" + "# padding\n" * 200_000, "more than the 1,048,576"),
        ("seed: " + "9" * 5000 + "\n", "a number too long"),
        ("seed: " + "9" * 100 + "\n", "more than 40 digits"),
        ({"seed": "x" * 100_000}, "more characters)"),
        ({"hardware": {"preset": "bitfusion", "overrides": {"dram_bits_per_cycle": 0}}}, "gives infinite latency"),
    ],
    ids=["20000 deep", "41 deep", "anchor bomb", "2 MB", "5000 digits", "100 digits", "100 kB value", "dram rate 0"],
)
def test_config_resource_abuse_is_one_line(digits_model, tmp_path, capsys, content, message):
    config = yaml_file(tmp_path, content)
    code = main(["cost", "--config", str(config)])
    err = capsys.readouterr().err
    assert_one_line_error(code, err, message)
    assert len(err) < 1000


def test_an_empty_layer_is_one_line(tmp_path, capsys, monkeypatch):
    (tmp_path / "empty_layer.py").write_text(
        "from torch import nn\n\n\ndef build():\n"
        "    return nn.Sequential(nn.Linear(64, 0), nn.ReLU(), nn.Linear(0, 10))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    config = yaml_file(
        tmp_path, {"model": {"name": None, "factory": "empty_layer:build", "input_shape": [64]}, **QUICK}
    )
    assert_one_line_error(main(["layers", "--config", str(config)]), capsys.readouterr().err, "has no weights")


def _fail_at(monkeypatch, episode: int, error: BaseException) -> None:
    original = Recorder._write_row

    def failing(self, number, row):
        if number == episode:
            raise error
        original(self, number, row)

    monkeypatch.setattr(Recorder, "_write_row", failing)


@pytest.mark.parametrize(
    ("error", "code", "message"),
    [
        (OSError(28, "No space left on device"), EXIT_USER_ERROR, "No space left on device"),
        (KeyboardInterrupt(), 130, "interrupted after 2 episodes"),
    ],
    ids=["disk full", "ctrl-c"],
)
def test_a_full_disk_or_ctrl_c_is_one_line_and_resumable(
    digits_model, tmp_path, capsys, monkeypatch, error, code, message
):
    folder = tmp_path / "run"
    config = yaml_file(tmp_path, {**QUICK, "agent": {"name": "random", "episodes": 4}})
    args = ["search", "--config", str(config), "--output", str(folder), "--no-progress"]
    with monkeypatch.context() as patch:
        _fail_at(patch, 3, error)
        assert main(args) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and f"--resume {folder}" in err, err
    assert main(["search", "--resume", str(folder), "--no-progress"]) == 0
    assert [int(r["episode"]) for r in rows(folder)] == [1, 2, 3, 4]


def test_episodes_csv_removed_under_the_run_is_one_line(digits_model, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "run"
    original = Recorder._write_row

    def removing(self, number, row):
        if number == 2:
            (folder / "episodes.csv").unlink()
        original(self, number, row)

    monkeypatch.setattr(Recorder, "_write_row", removing)
    args = ["search", "--config", str(yaml_file(tmp_path, QUICK)), "--output", str(folder), "--no-progress"]
    assert main(args) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "episodes.csv was removed" in err and "--resume" in err, err


def test_ctrl_c_after_the_episodes_says_how_to_resume(digits_model, tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "held_out_scores", interrupted)
    folder = tmp_path / "run"
    args = ["search", "--config", str(yaml_file(tmp_path, QUICK)), "--output", str(folder), "--no-progress"]
    assert main(args) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mpq-rl: interrupted; the run folder keeps every episode"), err
    assert err.endswith(f"resume with: mpq-rl search --resume {folder}\n"), err
