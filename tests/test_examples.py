"""The bring-your-own-model example (examples/tabular_mlp) run end to end as a user runs it: the real ``mpq-rl``
console script in the example's folder, which must find the user's modules there and read the config's relative
paths from the config's folder; and the command line's start: nothing heavy imported, a first line at once."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "tabular_mlp"
SCRIPT = Path(sys.executable).parent / "mpq-rl"
EPISODES = 12
needs_script = pytest.mark.skipif(not SCRIPT.is_file(), reason=f"no mpq-rl console script beside {sys.executable}")


def mpq_rl(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The installed ``mpq-rl`` script on this tree's package (PYTHONPATH), from ``cwd``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> Path:
    """A copy of the example with its weights trained (``python train.py``, as the walkthrough says)."""
    folder = tmp_path_factory.mktemp("example") / "tabular_mlp"
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("weights.pt", "runs", "__pycache__"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    trained = subprocess.run(
        [sys.executable, "train.py"], cwd=folder, env=env, capture_output=True, text=True, timeout=600
    )
    assert trained.returncode == 0, trained.stderr
    assert (folder / "weights.pt").is_file()
    return folder


@needs_script
def test_the_example_runs_end_to_end_from_its_folder(example):
    layers = mpq_rl("layers", "--config", "config.yaml", cwd=example)
    assert layers.returncode == 0, layers.stderr
    assert "4 quantizable layers, 4 searched" in layers.stdout and "weights covered: 100.00%" in layers.stdout

    run = example / "runs" / "tabular-mlp"
    search = mpq_rl("search", "--config", "config.yaml", "--episodes", str(EPISODES), "--no-progress", cwd=example)
    assert search.returncode == 0, search.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["episodes"] == EPISODES and summary["best"] is not None
    assert summary["best"]["cost_ratio"]["latency"] <= 0.4 + 1e-9
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["weights"] == str(example / "weights.pt")  # resolved once, so the run folder stands alone

    cost = mpq_rl("cost", "--run", str(run), cwd=example)
    assert cost.returncode == 0, cost.stderr
    assert "head" in cost.stdout

    evaluate = mpq_rl("evaluate", "--run", str(run), cwd=example)
    assert evaluate.returncode == 0, evaluate.stderr
    simulated = next(line for line in evaluate.stdout.splitlines() if line.startswith("policy (simulated)"))
    assert (
        simulated.split()[2] == f"{100 * summary['best']['test_metrics']['top1']:.2f}%"
    )  # the search's held-out score

    export = mpq_rl("export", "--run", str(run), "--output", str(run / "model.onnx"), cwd=example)
    assert export.returncode == 0, export.stderr
    assert (run / "model.onnx").is_file() and (run / "model.onnx.json").is_file()


@needs_script
def test_factories_are_imported_from_the_working_directory_only(example, tmp_path):
    """From the example's folder its modules import (as with ``python -m mpq_rl``); from elsewhere they do not."""
    inside = mpq_rl("layers", "--config", "config.yaml", cwd=example)
    assert inside.returncode == 0, inside.stderr
    outside = mpq_rl("layers", "--config", str(example / "config.yaml"), cwd=tmp_path)
    assert outside.returncode == 2
    assert outside.stderr.splitlines()[-1].startswith(
        "mpq-rl: error: model.factory: cannot import module 'tabular_mlp'"
    )


@needs_script
def test_relative_paths_are_read_from_the_config_files_folder(example):
    """A config in a subfolder names the weights relative to itself; the working directory does not matter, and
    a missing file is named by the path it was looked for at."""
    configs = example / "configs"
    configs.mkdir(exist_ok=True)
    config = yaml.safe_load((example / "config.yaml").read_text())
    config["model"]["weights"] = "../weights.pt"
    (configs / "moved.yaml").write_text(yaml.safe_dump(config))
    found = mpq_rl("layers", "--config", "configs/moved.yaml", cwd=example)
    assert found.returncode == 0, found.stderr

    config["model"]["weights"] = "missing.pt"
    (configs / "missing.yaml").write_text(yaml.safe_dump(config))
    missing = mpq_rl("layers", "--config", "configs/missing.yaml", cwd=example)
    assert missing.returncode == 2
    error = missing.stderr.splitlines()[-1]
    assert f"model.weights file '{configs / 'missing.pt'}' does not exist" in error
    assert "relative paths in a config file resolve against the file's folder" in error


def test_the_command_line_imports_nothing_heavy_before_a_command_runs():
    """``--help`` stays under a second because PyTorch, the agents, Ray and pydantic load only when a command
    runs."""
    code = "import sys, mpq_rl.cli; print(sorted(m for m in ('torch', 'stable_baselines3', 'ray', 'gymnasium', "
    code += "'pydantic', 'matplotlib') if m in sys.modules))"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    loaded = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == "[]"


@needs_script
def test_a_command_says_what_it_loads_first(tmp_path):
    """The first line comes before PyTorch loads; a config error still ends in one line."""
    (tmp_path / "bad.yaml").write_text("agent: {episodes: 0}\n")
    done = mpq_rl("cost", "--config", "bad.yaml", cwd=tmp_path)
    assert done.returncode == 2
    first, error = done.stderr.splitlines()
    assert first == "mpq-rl: cost: loading PyTorch and bad.yaml"
    assert error.startswith("mpq-rl: error: bad.yaml: key 'agent.episodes'")
