"""The adaptive-precision rule (AdaPT) against hand-worked numbers, and ``mpq-rl adapt`` end to end on digits."""

from __future__ import annotations

import copy
import csv
import json
import math

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mpq_rl.adapt.fixed_point import fixed_point, stochastic_round
from mpq_rl.adapt.rule import (
    AdaptRule,
    AdaptSettings,
    LossTrend,
    Precision,
    gradient_diversity,
    histogram_kl,
    loses_information,
    next_lookback,
    next_resolution,
    push_down,
    push_up,
    push_up_step,
)
from mpq_rl.adapt.run import policy_of
from mpq_rl.adapt.speedup import OpsCounter, training_speedup
from mpq_rl.cli import main
from mpq_rl.errors import UserError
from mpq_rl.quantization.policy import load_policy

SETTINGS = AdaptSettings()


def test_fixed_point_grid_and_range():
    q = fixed_point(8, 4)  # steps of 1/16, integers -128..127
    x = torch.tensor([0.3, -0.3, 100.0, -100.0])
    assert q.values(x).tolist() == [0.3125, -0.3125, 127 / 16, -128 / 16]  # 0.3 * 16 = 4.8 -> 5


def test_stochastic_rounding_is_unbiased_and_on_the_grid():
    generator = torch.Generator().manual_seed(0)
    x = torch.full((20000,), 0.3)
    rounded = stochastic_round(x, 8, 2, generator)  # grid of 1/4: 0.25 or 0.5, up with probability 0.2
    assert set(rounded.unique().tolist()) == {0.25, 0.5}
    assert float(rounded.mean()) == pytest.approx(0.3, abs=0.005)
    assert stochastic_round(torch.tensor([9.0]), 4, 1).item() == 3.5  # clamped at 7 / 2


def test_histogram_kl_hand_computed():
    w = torch.tensor([0.0, 0.1, 0.9, 1.0])
    assert histogram_kl(w, w.clone(), 2) == 0.0
    # Two bins over [0, 1]: P = [1/2, 1/2]; moving 0.1 to 0.6 gives Q = [1/4, 3/4].
    # KL = 1/2 ln(2) + 1/2 ln(2/3) = 1/2 ln(4/3).
    moved = torch.tensor([0.0, 0.6, 0.9, 1.0])
    assert histogram_kl(w, moved, 2) == pytest.approx(0.5 * math.log(4 / 3))
    # A value pushed out of the range empties nothing here, but Q loses 1/4 of its mass: P = [1/2, 1/2],
    # Q = [1/2, 1/4]: KL = 1/2 ln(2).
    assert histogram_kl(w, torch.tensor([0.0, 0.1, 0.9, 1.5]), 2) == pytest.approx(0.5 * math.log(2))
    assert histogram_kl(w, torch.tensor([0.0, 0.1, 0.1, 0.1]), 2) == math.inf  # the upper bin of P empties


def test_push_down_hand_worked():
    # Weights 0, 3/64 and 1 at 50 bins over [0, 1] (bins of 0.02): 3/64 = 0.047 sits in bin 2.
    w = torch.tensor([0.0, 3 / 64, 1.0])
    # fl by bisection over [4, 12] at wl 16: mid 8 keeps it (3/64 is on the 1/256 grid) -> [4, 8]; mid 6 keeps it
    # -> [4, 6]; mid 5 moves 3/64 = 1.5/32 to 2/32 = 0.0625, bin 3 -> [6, 6]: fl = 6.
    assert not loses_information(w, 16, 6, 50)
    assert loses_information(w, 16, 5, 50)
    # wl by bisection over [6, 16] at fl 6: 1.0 needs the integer 64. Mid 11 keeps it -> [6, 11]; mid 8 (levels up
    # to 127) keeps it -> [6, 8]; mid 7 clamps 1.0 to 63/64 = 0.984, still in the last bin -> [6, 7]; mid 6
    # clamps it to 31/64 = 0.484, bin 24 -> [7, 7]: wl = 7.
    assert not loses_information(w, 7, 6, 50)
    assert loses_information(w, 6, 6, 50)
    assert push_down(w, 16, 12, 50, SETTINGS) == (7, 6)
    # Nothing below the current precision keeps the histogram: the precision stays.
    assert push_down(torch.tensor([0.0, 1 / 4096 + 1 / 8192, 1.0]), 16, 12, 8192, SETTINGS) == (16, 12)


def test_push_up_hand_worked():
    # GD = e^2: l = 1, s1 = max(ceil(1 / 1), 1) = 1, s2 = max(min(ceil(32), 32) - 4, 0) = 28.
    gd = math.exp(2.0)
    assert [push_up_step(gd, 4, s) for s in ("min", "mean", "max")] == [1, 15, 28]  # mean = ceil(29 / 2)
    # min: fl = 5, wl = max(8, 5) + 1 = 9; buffer: wl = max(min(5 + 8, 32), 9) = 13.
    assert push_up(gd, 8, 4, "min", SETTINGS) == (13, 5)
    # mean: fl = 19, wl = 20; buffer: wl = max(27, 20) = 27.
    assert push_up(gd, 8, 4, "mean", SETTINGS) == (27, 19)
    # max: fl = 32, wl = min(33, 32) = 32; buffer: fl = min(32, 32 - 8) = 24, wl = max(min(32, 32), 32) = 32.
    assert push_up(gd, 8, 4, "max", SETTINGS) == (32, 24)
    # GD = e^1.6: l = 0.6, s1 = ceil(1 / 0.36) = ceil(2.78) = 3, s2 = ceil(32 * 0.36) - 5 = ceil(11.52) - 5 = 7.
    gd = math.exp(1.6)
    assert [push_up_step(gd, 5, s) for s in ("min", "mean", "max")] == [3, 5, 7]
    # From (13, 5): fl = 8, 10, 12; wl = max(13, fl) + 1 = 14; buffer: wl = max(fl + 8, 14) = 16, 18, 20.
    assert [push_up(gd, 13, 5, s, SETTINGS) for s in ("min", "mean", "max")] == [(16, 8), (18, 10), (20, 12)]
    # l <= 0 (GD = 2: l = ln 2 - 1 < 0) or GD infinite: one bit.
    assert push_up_step(2.0, 5, "max") == push_up_step(math.inf, 5, "max") == 1


def test_gradient_diversity_lookback_and_resolution():
    assert gradient_diversity(2, torch.tensor([1.0, 1.0])) == pytest.approx(math.sqrt(2))  # two orthogonal
    assert gradient_diversity(3, torch.tensor([0.0, 0.0])) == math.inf
    # lb = ceil(clip(100 / GD, 25, 100)) with m = 1: GD sqrt(2) -> ceil(70.71) = 71; GD 1 -> 100; GD 8 -> 25.
    assert next_lookback(math.sqrt(2), 25, SETTINGS) == 71
    assert next_lookback(1.0, 25, SETTINGS) == 100
    assert next_lookback(8.0, 60, SETTINGS) == 25
    # m = 0.5 from lb 25 at GD 2: ceil(0.5 * 50 + 0.5 * 25) = ceil(37.5) = 38.
    assert next_lookback(2.0, 25, AdaptSettings(lookback_momentum=0.5)) == 38
    assert next_resolution(100, 60, SETTINGS) == 61
    assert next_resolution(25, 60, SETTINGS) == 59
    assert next_resolution(71, 60, SETTINGS) == 60
    assert next_resolution(25, 50, SETTINGS) == 50 and next_resolution(100, 150, SETTINGS) == 150


def test_rule_window_normalizes_and_resets():
    rule = AdaptRule(["a"])
    assert rule.precision["a"] == Precision(8, 4, 25, 50)
    # One gradient: GD = 1 / 1 = 1, lb = 100 (its maximum), so res + 1.
    assert rule.observe_gradient("a", torch.tensor([3.0, 0.0])) == 1.0
    assert (rule.precision["a"].lb, rule.precision["a"].res) == (100, 51)
    # [3, 0] and [0, 4] normalize to orthogonal unit vectors: GD = sqrt(2), lb = 71, res unchanged.
    assert rule.observe_gradient("a", torch.tensor([0.0, 4.0])) == pytest.approx(math.sqrt(2))
    assert (rule.precision["a"].lb, rule.precision["a"].res) == (71, 51)
    assert not rule.ready("a")
    # The same gradient again and again: GD -> 1, lb -> 100 (res + 1 per step there); ready once count >= lb.
    steps = 2
    while not rule.ready("a"):
        rule.observe_gradient("a", torch.tensor([1.0, 0.0]))
        steps += 1
    assert steps == rule.precision["a"].lb and rule.precision["a"].res > 50
    # Push-down from (8, 4): fl stays 4 (the range [4, 4]); at fl 4, 3/64 rounds to 1/16 (bin 2 -> 3) at every wl,
    # so wl stays 8. Push-up: GD = steps / ||[steps - 1, 1]|| ~ 1, l = ln(GD) - 1 < 0, one bit: fl 5, wl 9,
    # buffer wl = 5 + 8 = 13.
    before = rule.precision["a"]
    assert rule.adapt("a", torch.tensor([0.0, 3 / 64, 1.0])) == Precision(13, 5, before.lb, before.res)
    assert not rule.ready("a")


def test_loss_trend_escalates_and_resets():
    trend = LossTrend()
    assert [trend.update(loss, 2) for loss in (1.0, 1.0)] == ["min", "min"]  # fewer than 2 losses seen
    # Not below the mean of the last two: min -> mean -> max -> max; below it: back to min.
    assert [trend.update(loss, 2) for loss in (1.0, 1.0, 1.0, 0.5)] == ["mean", "max", "max", "min"]


def test_speedup_model_hand_computed():
    ops = OpsCounter()
    # 100 and 300 MACs per sample at 16 and 8 bits, 2 samples: fp32 = 2 * 400 * 32 = 25600,
    # quantized = 2 * (1600 + 2400) = 8000; speed-up = 51200 / 33600 = 1.5238; average bits 32 * 8000 / 25600 = 10.
    ops.add_step({"a": 100, "b": 300}, {"a": 16, "b": 8}, 2)
    assert ops.speedup == pytest.approx(51200 / 33600)
    assert ops.average_bits == pytest.approx(10.0)
    assert training_speedup(100.0, 100.0) == 1.0 and training_speedup(100.0, 0.0) == 2.0


def test_policy_is_at_the_final_word_lengths_and_refuses_widths_without_an_integer_container():
    precision = {"a": Precision(5, 3, 25, 50), "b": Precision(8, 6, 25, 50)}
    assert policy_of(precision, 8) == {"a": (5, 8), "b": (8, 8)}
    with pytest.raises(UserError, match="ended adaptive training at 12 bits"):
        policy_of({"a": Precision(12, 4, 25, 50)}, 8)


def test_capped_settings_keep_every_format_within_the_cap():
    settings = AdaptSettings.capped(8)
    assert (settings.start_wl, settings.max_bits, settings.buffer_bits) == (8, 8, 2)
    for diversity in (0.5, 1.0, 3.0, 30.0, math.inf):
        for strategy in ("min", "mean", "max"):
            wl, fl = push_up(diversity, 6, 4, strategy, settings)
            assert fl <= 6 and fl + 2 <= wl <= 8


@pytest.fixture(scope="module")
def adapted(tmp_path_factory, one_thread):
    folder = tmp_path_factory.mktemp("adapt") / "run"
    with pytest.MonkeyPatch.context() as patch:
        lines = []
        patch.setattr("sys.stderr", _Lines(lines))
        assert main(["adapt", "--epochs", "2", "--output", str(folder)]) == 0
    return folder, "".join(lines)


class _Lines:
    """A stand-in stderr that keeps what is written."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines

    def write(self, text: str) -> None:
        self.lines.append(text)

    def flush(self) -> None:
        pass


def test_adapt_run_changes_precisions_and_logs_them(adapted):
    adapted, progress = adapted
    for arm in ("adaptive", "float32"):
        for epoch in (1, 2):
            assert f"adapt: {arm} epoch {epoch}/2 done, mean loss" in progress
    summary = json.loads((adapted / "summary.json").read_text())
    assert summary["format"] == "mpq_rl.adapt/1"
    assert 1.0 < summary["speedup"] < 2.0
    assert 0.9 < summary["test_top1"]["adapt"] <= 1.0 and 0.9 < summary["test_top1"]["fp32"] <= 1.0
    events = EventAccumulator(str(adapted / "tb"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    with (adapted / "precision.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    layers = list(summary["layers"])
    changed = 0
    for name in layers:
        word_lengths = [e.value for e in events.Scalars(f"adapt/wl/{name}")]
        assert word_lengths == [float(r["wl"]) for r in rows if r["layer"] == name]
        assert word_lengths[0] == 8.0 and word_lengths[-1] == summary["layers"][name]["wl"]
        changed += len({(r["wl"], r["fl"]) for r in rows if r["layer"] == name}) > 1
    assert changed == len(layers)  # every layer's format moved during training (within the 8-bit cap)
    # the speed-up logged at the last step is the summary's, and it follows from the logged word lengths
    assert events.Scalars("adapt/speedup")[-1].value == pytest.approx(summary["speedup"])
    assert set(events.Tags()["images"]) == {"adapt/word_lengths", "adapt/policy"}
    policy = load_policy(adapted / "policy.json")
    assert {name: bits[0] for name, bits in policy.items()} == {
        name: layer["wl"] for name, layer in summary["layers"].items()
    }
    assert all(2 <= bits[0] <= 8 for bits in policy.values())
    assert 0.0 < summary["cost"]["ratio_to_w8a8"] <= 1.0  # never above W8A8: at most 8 bits per weight
    assert json.loads((adapted / "policy.json").read_text())["adapt"]["stem"]["fl"] == summary["layers"]["stem"]["fl"]


def test_adapt_policy_accepted_by_cost_and_evaluate_scores_the_adapted_weights(adapted, capsys):
    adapted, _ = adapted
    assert main(["cost", "--run", str(adapted), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["layers"][0]["w_bits"] <= 8
    scores = {}
    for extra in ([], ["--weights", str(adapted)]):
        assert main(["evaluate", "--run", str(adapted), *extra]) == 0
        out = capsys.readouterr().out
        assert "policy (simulated)" in out
        scores[bool(extra)] = next(line for line in out.splitlines() if line.startswith("fp32"))
    # the FP32 row is the model evaluated: the configured weights, then the adapted ones
    summary = json.loads((adapted / "summary.json").read_text())
    assert f"{100 * summary['test_top1']['adapt']:.2f}%" in scores[True]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--epochs", "0"], "--epochs must be at least 1"),
        (["--epochs", "1", "--activation-bits", "12"], "--activation-bits must be among"),
        (["--epochs", "1", "--lr", "-1"], "--lr must be positive"),
        (["--epochs", "1", "--max-bits", "16"], "--max-bits must be 4 to 8"),
    ],
)
def test_adapt_bad_input_one_line(tmp_path, capsys, args, message):
    assert main(["adapt", "--output", str(tmp_path / "run"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_adapt_refuses_a_folder_of_other_files(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["adapt", "--epochs", "1", "--output", str(tmp_path)]) == 2
    assert "not an mpq_rl run folder" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_same_seed_same_training(digits_workload, one_thread):
    """Two adaptive runs with one seed: the same formats, weights and scores (stochastic rounding is seeded)."""
    from dataclasses import replace

    from mpq_rl.adapt.training import train

    runs = []
    for _ in range(2):
        workload = replace(digits_workload, model=copy.deepcopy(digits_workload.model))
        result = train(workload, 1, 1e-3, 3, 20, True)  # 50 steps: every layer adapts at least once
        runs.append((result, workload.model.state_dict()))
    (first, weights), (second, again) = runs
    assert first.precision == second.precision and first.losses == second.losses
    assert first.test_top1 == second.test_top1 and first.ops.speedup == second.ops.speedup
    assert all(torch.equal(weights[k], again[k]) for k in weights)
    assert any(p.wl != 8 for p in first.precision.values())
