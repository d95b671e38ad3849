"""The change-point estimates the retrain window starts from."""

from __future__ import annotations

import numpy as np
from driftloop_drift.domain.changepoint import categorical_change_point, rise_change_point


def test_a_rise_of_the_error_rate_is_placed_near_where_it_happened() -> None:
    rng = np.random.default_rng(0)
    errors = [*(rng.uniform(size=1500) < 0.05), *(rng.uniform(size=400) < 0.25)]
    found = rise_change_point([int(e) for e in errors])
    assert found is not None
    assert abs(found.index - 1500) <= 30, found


def test_no_change_and_a_fall_give_no_estimate() -> None:
    rng = np.random.default_rng(1)
    steady = [int(e) for e in rng.uniform(size=3000) < 0.1]
    assert rise_change_point(steady) is None
    better = [int(e) for e in [*(rng.uniform(size=800) < 0.3), *(rng.uniform(size=800) < 0.05)]]
    assert rise_change_point(better) is None, "a model getting better is no drift"


def test_too_short_a_stream_gives_no_estimate() -> None:
    assert rise_change_point([0] * 20 + [1] * 20) is None
    assert categorical_change_point([0, 1, 2] * 10, 3) is None


def test_a_shift_of_bins_is_placed_near_where_it_happened() -> None:
    rng = np.random.default_rng(2)
    codes = [*rng.integers(0, 10, 300), *rng.integers(5, 10, 200)]
    found = categorical_change_point([int(c) for c in codes], 10)
    assert found is not None and abs(found.index - 300) <= 20, found
    same = [int(c) for c in rng.integers(0, 10, 500)]
    assert categorical_change_point(same, 10) is None
