"""The report's notes on uniform settings: a tie with the best policy on calibration data (and which is cheaper),
and a cheaper uniform setting that scores as well on the test split."""

from mpq_rl.runs.ties import calibration_ties, tied_uniform

BEST = {"proxy": 0.9925, "metrics": {"top1": 0.9925}, "cost_ratio": {"latency": 0.427}}
BEST_TEST = {"top1": 0.9899}


def uniform(w: int, a: int, calibration: float, test: float, cost: float) -> dict:
    return {
        "w_bits": w,
        "a_bits": a,
        "proxy": calibration,
        "metrics": {"top1": calibration},
        "test": {"top1": test},
        "cost_ratio": {"latency": cost},
    }


def test_a_cheaper_uniform_setting_that_ties_on_calibration_is_named_with_both_costs():
    items = [uniform(4, 3, 0.9925, 0.9800, 0.328), uniform(8, 8, 0.9925, 0.9874, 1.0), uniform(2, 2, 0.45, 0.49, 0.2)]
    assert [(t["w_bits"], t["a_bits"], t["cheaper"]) for t in tied_uniform(BEST, items, "latency")] == [
        (4, 3, True),
        (8, 8, False),
    ]
    notes = calibration_ties(BEST, BEST_TEST, items, "top1", "latency")
    assert notes == [
        "note: the best policy ties uniform W4A3 on calibration top1 (99.25%); the uniform setting is cheaper "
        "(0.328 against 0.427 of W8A8 latency)",
        "note: the best policy ties uniform W8A8 on calibration top1 (99.25%); the searched policy is cheaper "
        "(0.427 against 1.000 of W8A8 latency)",
    ]


def test_a_cheaper_uniform_setting_as_good_on_test_is_explained_by_its_calibration_score():
    items = [uniform(4, 3, 0.9775, 0.9899, 0.328), uniform(4, 4, 0.985, 0.9824, 0.332)]
    assert tied_uniform(BEST, items, "latency") == []
    assert calibration_ties(BEST, BEST_TEST, items, "top1", "latency") == [
        "note: uniform W4A3 is cheaper (0.328 against 0.427) and scores 98.99% on the test split against the best "
        "policy's 98.99%, but 97.75% on calibration data against 99.25%: the search chooses on calibration data only"
    ]


def test_no_best_policy_means_no_notes():
    assert calibration_ties(None, None, [uniform(4, 3, 0.9925, 0.99, 0.3)], "top1", "latency") == []
