"""``mpq-rl compare``: runs every (searcher, seed), writes the table, the JSON and the Pareto plot."""

import json
import sys
from pathlib import Path

import pytest

from mpq_rl.cli import main
from mpq_rl.config import parse_config
from mpq_rl.errors import UserError
from mpq_rl.runs.compare import COMPARE_JSON, COMPARE_MD, PARETO_PNG, compare

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))
from collect_results import overview, section  # noqa: E402

SMALL = {
    "quantization": {"weight_bits": [2, 4, 8], "activation_bits": [8], "include": "down2|pw"},
    "data": {"calibration_samples": 128},
    "budget": 0.9,
    "agent": {"episodes": 3},
}


def test_two_searchers_two_seeds(tmp_path, digits_model):
    comparison = compare(parse_config(SMALL), ["uniform", "random"], [0, 1], tmp_path)
    assert [(r["agent"], r["seed"]) for r in comparison["runs"]] == [
        ("uniform", 0),
        ("uniform", 1),
        ("random", 0),
        ("random", 1),
    ]
    assert all((tmp_path / f"{r['agent']}-seed{r['seed']}" / "summary.json").is_file() for r in comparison["runs"])
    assert all(r["found"] and r["cost_ratio"] <= 0.9 + 1e-9 for r in comparison["runs"])
    random_runs = [r for r in comparison["runs"] if r["agent"] == "random"]
    assert all(r["episodes"] == 3 for r in random_runs)
    summary = {row["agent"]: row for row in comparison["summary"]}
    tests = [r["test"] for r in random_runs]
    assert summary["random"]["test_mean"] == pytest.approx(sum(tests) / 2)
    assert summary["uniform"]["runs"] == summary["uniform"]["found"] == 2
    # each seed's best uniform baseline is picked on its own calibration proxy, never on the test split
    for chosen in comparison["uniform_chosen"]:
        saved = json.loads((tmp_path / f"uniform-seed{chosen['seed']}" / "summary.json").read_text())["uniform"]
        best = max(saved, key=lambda u: u["proxy"])
        assert (chosen["w_bits"], chosen["a_bits"]) == (best["w_bits"], best["a_bits"])
        assert chosen["test"] == best["test"]["top1"]
    assert [c["seed"] for c in comparison["uniform_chosen"]] == [0, 1]

    table = (tmp_path / COMPARE_MD).read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| searcher")]
    assert [row.split("|")[1].strip() for row in rows][:2] == ["uniform", "random"]
    assert rows[2].startswith("| best uniform on calibration (W") and rows[3].startswith("| FP32 |")
    assert f"{100 * summary['random']['test_mean']:.2f}%" in rows[1]
    assert json.loads((tmp_path / COMPARE_JSON).read_text())["format"] == "mpq_rl.compare/1"
    assert (tmp_path / PARETO_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # experiments/collect_results.py turns the folder into a results page with the command and the plot
    page = tmp_path / "docs" / "results.md"
    lines = section(tmp_path, page)
    assert lines[0].startswith("## mpq-rl compare: budget 0.9 of W8A8 latency")
    assert f"--agents uniform,random --seeds 0,1 --episodes 3 --budget 0.9 --output {tmp_path}`" in "\n".join(lines)
    assert (page.parent / "results" / f"{tmp_path.name}-{PARETO_PNG}").read_bytes()[:4] == b"\x89PNG"
    table = overview([comparison, comparison])
    assert table[0] == "| searcher | 0.9 of W8A8 latency | 0.9 of W8A8 latency |"
    random_mean = f"{100 * summary['random']['test_mean']:.2f}% ± {100 * summary['random']['test_std']:.2f}%"
    assert table[3] == f"| random | {random_mean} | {random_mean} |"
    assert table[-1].startswith("| FP32 | ")


def test_a_comparison_cut_short_continues_where_it_stopped(tmp_path, digits_model, capsys):
    first = compare(parse_config(SMALL), ["random"], [0, 1], tmp_path)
    seed0, seed1 = tmp_path / "random-seed0", tmp_path / "random-seed1"
    episodes0 = (seed0 / "episodes.csv").stat().st_mtime_ns
    (seed1 / "summary.json").unlink()  # seed 1 was cut short after its search: resumed, no policy evaluated again
    again = compare(parse_config(SMALL), ["random"], [0, 1], tmp_path, progress=True)
    err = capsys.readouterr().err
    assert "random-seed0 holds this run finished" in err
    assert "mpq-rl: run 1 of 2: agent random, seed 0\n" in err and "mpq-rl: run 2 of 2: agent random, seed 1\n" in err
    assert (seed0 / "episodes.csv").stat().st_mtime_ns == episodes0
    # a run's evaluations are its total over every part: the resumed part of seed 1 evaluated nothing new
    parts = json.loads((seed1 / "summary.json").read_text())["parts"]
    assert [part["evaluations"] for part in parts] == [first["runs"][1]["evaluations"], 0]
    strip = ("wall_seconds",)
    assert [{k: v for k, v in r.items() if k not in strip} for r in again["runs"]] == [
        {k: v for k, v in r.items() if k not in strip} for r in first["runs"]
    ]
    assert again["uniform"] == first["uniform"] and again["fp32_test"] == first["fp32_test"]
    # another config is a new comparison: the finished runs are replaced, not read back
    longer = compare(parse_config({**SMALL, "agent": {"episodes": 4}}), ["random"], [0], tmp_path)
    assert longer["runs"][0]["episodes"] == 4 and (seed0 / "episodes.csv").stat().st_mtime_ns != episodes0


def test_overview_averages_each_seeds_uniform_setting_chosen_on_calibration():
    comparison = {
        "budget": 0.5,
        "metric": "energy",
        "proxy": "kl",
        "agents": ["random"],
        "summary": [{"agent": "random", "test_mean": 0.01234, "test_std": 0.002}],
        "seeds": [0, 1],
        "uniform_chosen": [  # each seed's best uniform setting on calibration
            {"seed": 0, "w_bits": 4, "a_bits": 4, "test": 0.05, "proxy": -0.001, "cost_ratio": 0.4},
            {"seed": 1, "w_bits": 8, "a_bits": 4, "test": 0.03, "proxy": -0.002, "cost_ratio": 0.5},
        ],
        "fp32_test": 0.0,
    }
    assert overview([comparison]) == [
        "| searcher | 0.5 of W8A8 energy |",
        "|---|---:|",
        "| random | 0.0123 ± 0.0020 |",
        "| best uniform that fits (on calibration) | 0.0400 ± 0.0141 (W4A4, W8A4) |",
        "| FP32 | 0.0000 |",
    ]


def test_unknown_agent_is_refused_before_any_run(tmp_path):
    with pytest.raises(UserError, match="unknown agent 'nope'"):
        compare(parse_config(SMALL), ["random", "nope"], [0], tmp_path)
    assert not list(tmp_path.iterdir())


def test_cli_reports_bad_seeds(capsys, tmp_path):
    with pytest.raises(SystemExit):
        main(["compare", "--agents", "random", "--seeds", "a,b", "--output", str(tmp_path)])
    assert "comma-separated integers" in capsys.readouterr().err
