"""The budget's rules (mpq_rl.search.budget): the in-budget tolerance, projection, the action wall, uniform settings and
runnable pairs, on a hand-built three-layer cost table."""

import itertools

import numpy as np
import pytest

from mpq_rl.errors import UserError
from mpq_rl.search.budget import Budget, within_fraction
from mpq_rl.search.enforcement import ENFORCEMENTS, PENALTY_PER_EXCESS

WEIGHT_BITS, ACTIVATION_BITS = (2, 4, 8), (4, 8)


def budget(fraction: float, nan_pair: bool = False) -> Budget:
    """Layer s costs (s + 1) * w * a / 64 at w/a bits, so W8A8 of the three layers costs 1 + 2 + 3 = 6."""
    costs = np.array(
        [[[(s + 1) * w * a / 64 for a in ACTIVATION_BITS] for w in WEIGHT_BITS] for s in range(3)], dtype=float
    )
    if nan_pair:
        costs[:, 0, 0] = np.nan  # W2A4 cannot run
    return Budget(("a", "b", "c"), WEIGHT_BITS, ACTIVATION_BITS, costs, 0.0, 6.0, fraction, "latency")


def test_within_fraction_allows_rounding_only():
    assert within_fraction(0.5, 0.5) and within_fraction(0.5 * (1 + 1e-12), 0.5)
    assert not within_fraction(0.5 * (1 + 1e-6), 0.5)
    assert budget(0.5).within(0.5) and not budget(0.5).within(0.5001)


def test_projection_keeps_the_highest_bits_that_leave_room_for_the_rest():
    b = budget(0.5)  # limit 3.0
    # Layer a at W8A8 costs 1; the rest at their lowest (W2A4: 2/8 + 3/8 = 0.625) fit, so a keeps W8A8.
    assert b.project(0, 0.0, (2, 1)) == (2, 1)
    # After 2.9 spent, layer b has 3.0 - 2.9 - 0.375 (c's lowest) = -0.275: its cheapest pair.
    assert b.project(1, 2.9, (2, 1)) == (0, 0)
    # Room 3.0 - 1.0 - 0.375 = 1.625 for b: W8A8 (2.0) does not fit; W8A4 and W4A8 (1.0 each) do; more weight bits win.
    assert b.project(1, 1.0, (2, 1)) == (2, 0)


def test_every_projected_policy_fits_and_projection_never_raises_bits():
    b = budget(0.3)
    for choices in itertools.product(itertools.product(range(3), range(2)), repeat=3):
        fitted = b.projected(choices)
        assert b.fits(fitted)
        assert all(f[0] <= c[0] and f[1] <= c[1] for f, c in zip(fitted, choices, strict=True))


def test_the_action_wall_lowers_from_the_last_layer():
    b = budget(0.5)
    lowered = b.lower_to_fit([(2, 1)] * 3)  # 6.0 -> lower c, then b, ... one notch at a time
    assert lowered == [(2, 1), (1, 0), (1, 0)]
    assert b.fits(lowered) and b.total(lowered) == pytest.approx(1 + 2 * 2 / 8 * 1 + 3 * 2 / 8)


def test_uniform_settings_fit_costliest_first_and_skip_pairs_that_cannot_run():
    settings = budget(0.5, nan_pair=True).uniform_choices()
    pairs = [s[0] for s in settings]
    assert all(s == [s[0]] * 3 for s in settings)
    assert (0, 0) not in pairs  # NaN never fits
    assert pairs == [(2, 0), (1, 1), (1, 0), (0, 1)]  # 3.0, 3.0 (fewer weight bits second), 1.5, 1.5
    assert budget(0.5, nan_pair=True).runnable_pairs(0) == [(0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]


def test_an_impossible_budget_names_the_reachable_minimum():
    # lowest: W2A4 everywhere, (1 + 2 + 3) * 8 / 64 = 0.75 of 6.0
    with pytest.raises(UserError, match=r"cannot be met: the lowest bits reach 0\.1250 at best; raise budget"):
        budget(0.05).check_feasible()
    assert budget(0.5).with_fraction(0.2).fraction == 0.2


def test_from_costs_slices_the_searched_layers_and_charges_the_fixed_ones():
    table_bits = (2, 4, 8, 32)
    table = np.arange(4 * 4 * 4, dtype=float).reshape(4, 4, 4)  # [layer, w, a]
    b = Budget.from_costs(
        table,
        table_bits,
        ["x", "y", "z", "t"],
        ["y", "t"],
        {"x": (8, 8), "z": (32, 32)},
        [4, 8],
        [8],
        0.5,
        "bops",
        reference=100.0,
    )
    assert b.names == ("y", "t")
    assert b.costs.tolist() == [[[table[1, 1, 2]], [table[1, 2, 2]]], [[table[3, 1, 2]], [table[3, 2, 2]]]]
    assert b.fixed_cost == table[0, 2, 2] + table[2, 3, 3]


def test_each_enforcement_acts_at_its_own_moment_only():
    """Projection acts while choosing, the wall when a finished policy is settled, the penalty in the reward."""
    b, top = budget(0.5), [(2, 1)] * 3  # all W8A8 costs 6.0: twice the limit of 3.0
    project, wall, penalty = (ENFORCEMENTS[name] for name in ("project", "wall", "penalty"))
    assert project.choose(b, 1, 1.0, (2, 1)) == b.project(1, 1.0, (2, 1)) == (2, 0)
    assert wall.choose(b, 1, 1.0, (2, 1)) == penalty.choose(b, 1, 1.0, (2, 1)) == (2, 1)
    lowered, changed = wall.settle(b, top, 0)
    assert lowered == b.lower_to_fit(top) and b.fits(lowered)
    assert changed == sum(c != t for c, t in zip(lowered, top, strict=True)) > 0
    assert project.settle(b, top, 2) == penalty.settle(b, top, 2) == (top, 2)
    assert penalty.penalty(1.0, 0.5) == pytest.approx(PENALTY_PER_EXCESS * (1.0 / 0.5 - 1.0))
    assert penalty.penalty(0.5, 0.5) == project.penalty(1.0, 0.5) == wall.penalty(1.0, 0.5) == 0.0
