"""The benchmarks still run and report their ratios (tiny settings; speed is never asserted here)."""

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ is not part of the installed package

from benchmarks import episode_cost, format_cost, gpu_check, many_layers, parallel_scaling, step_overhead  # noqa: E402
from benchmarks.harness import interleaved, write_section  # noqa: E402


def test_interleaved_times_every_variant_with_counts_and_setup():
    calls = []
    times = interleaved(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
        repeats=3,
        counts={"b": 1},
        before={"a": lambda: calls.append("setup")},
    )
    assert [len(times["a"]), len(times["b"])] == [3, 1]
    assert calls.count("setup") == 3 and calls.count("b") == 1


def test_simulated_speedup_against_hand_computed_values():
    speedup = parallel_scaling.simulated_speedup
    # 4 workers, 10 ms evaluations, 2 ms overhead of which 1 ms in the driver, half the episodes from the cache
    # at 0.1 ms: (0.5 * 0.1 + 0.5 * 10) / (0.5 * 0.1 + 0.5 * (1 + 11 / 4)) = 5.05 / 1.925
    assert speedup(4, 10e-3, 2e-3, 1e-3, 0.5, 0.1e-3) == pytest.approx(5.05 / 1.925)
    assert speedup(1, 10e-3, 2e-3, 1e-3, 0.0, 0.0) == pytest.approx(10 / 12)  # one worker only adds the overhead
    # Amdahl's bound: the driver's serial share caps the speed-up, whatever the workers
    assert speedup(10**9, 10e-3, 2e-3, 1e-3, 0.0, 0.0) == pytest.approx(10.0, rel=1e-6)


def test_write_section_replaces_only_its_own_section(tmp_path):
    path = tmp_path / "RESULTS.md"
    write_section("one", ["first"], path)
    write_section("two", ["second"], path)
    write_section("one", ["again"], path)
    text = path.read_text()
    assert "again" in text and "second" in text and "first" not in text
    assert text.index("again") < text.index("second")


def test_episode_cost_runs_and_reports_its_ratios(digits_model):
    written = {}
    outcome = episode_cost.main(
        ["--workloads", "digits", "--repeats", "1"], write=lambda name, lines: written.update({name: lines})
    )
    assert [r["threads"] for r in outcome["results"]] == list(episode_cost.THREADS)
    for result in outcome["results"]:
        for key in (
            "episode_vs_fp32",
            "episode_vs_fp32_of_medians",
            "quantized_forward_vs_fp32",
            "episode_vs_quantized_forward",
            "naive_vs_episode",
            "cold_vs_fp32",
        ):
            assert result[key] > 0
        assert result["naive_matches_env"], "the naive baseline must score the same policy to the same metrics"
        assert result["new_policies"] == "1 of 1"
    assert "episode / FP32" in "\n".join(written[episode_cost.NAME])


def test_step_overhead_runs_and_reports_per_step_times():
    written = {}
    outcome = step_overhead.main(
        ["--depths", "3", "12", "--repeats", "1"], write=lambda name, lines: written.update({name: lines})
    )
    assert [r["depth"] for r in outcome["results"]] == [3, 12]
    for result in outcome["results"]:
        assert result["steps_timed"] == result["depth"] - 1
        assert result["step_ms"] > 0 and result["step_vs_shallowest"] > 0
    assert outcome["target_met"] is None
    assert "step mean µs" in "\n".join(written[step_overhead.NAME])


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the check runs for real")
def test_gpu_check_says_it_is_skipped_without_a_gpu(capsys):
    written = {}
    assert gpu_check.main([], write=lambda name, lines: written.update({name: lines})) == 0
    assert (
        capsys.readouterr().out
        == "gpu_check: skipped: PyTorch sees no CUDA GPU on this machine (run it where there is one)\n"
    )
    assert written == {}


def test_many_layers_runs_and_reports_build_and_episode_ratios():
    written = {}
    outcome = many_layers.main(
        ["--depths", "3", "6", "--repeats", "2"], write=lambda n, lines: written.update({n: lines})
    )
    assert [r["depth"] for r in outcome["results"]] == [3, 6]
    for result in outcome["results"]:
        assert result["ranges"] == f"{7 * result['depth']} weights + {7 * result['depth']} activation ranges"
        assert result["build_s"] > 0 and result["episode_vs_fp32"] > 0 and result["first_vs_steady"] > 0
    assert "episode / FP32" in "\n".join(written[many_layers.NAME])


def test_format_cost_reports_fp_and_flint_against_int(digits_model):
    outcome = format_cost.run(repeats=1, bits=(4,))
    (result,) = outcome["results"]
    assert result["vs_int"]["int"] == 1.0 and result["vs_int"]["fp"] > 0 and result["vs_int"]["flint"] > 0
    assert "| 4 |" in "\n".join(format_cost.report(outcome))


def test_baselines_report_checks_the_issue_targets_from_rows(tmp_path):
    from benchmarks import baselines

    def row(searcher, seed, test, calibration):
        pick = {"calibration": calibration, "proxy": calibration, "selection": None, "test": test, "cost_ratio": 0.3}
        return {
            "searcher": searcher,
            "workload": "digits",
            "budget": 0.35,
            "seed": seed,
            "episodes": 100,
            "evaluations": 100.0,
            "wall_s": 1.0,
            "picks": {"top1": pick, "selection": pick, "pooled": pick},
        }

    rows = [row("mbppo", s, 0.99, 1.0) for s in (0, 1)]
    rows += [row("surrogate", s, t, 0.995) for s, t in ((0, 0.97), (1, 0.98))]
    rows += [row("hawq", s, 0.985, 0.99) for s in (0, 1)]
    (target,) = baselines.targets(rows)[2:]
    cells = [c.strip() for c in target.split("|")[1:-1]]
    # mbppo 99.00 above hawq 98.50; mbppo - surrogate = +1.50 > std 0.71; gap 1.00 vs hawq 0.50: larger
    assert cells[1:4] == ["99.00", "98.50 (hawq)", "met"]
    assert cells[4:7] == ["+1.50", "0.71", "met"]
    assert cells[7:] == ["+1.00", "+0.50", "**missed**"]
    runs = tmp_path / "runs.jsonl"
    runs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert "| mbppo | 99.00 ± 0.00 |" in "\n".join(baselines.report(runs))
