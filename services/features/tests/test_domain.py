"""The feature arithmetic agrees with a plain-Python reference, point in time."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest
from driftloop_core.feature_math import (
    EntityState,
    FeatureMath,
    FeatureStatus,
    Outcome,
    window_start,
)
from driftloop_core.featureset import default_featureset_path, load_featureset

FS = load_featureset(default_featureset_path())
MIN = 60_000
T0 = 1_763_800_000_000


def reference(events: list[tuple[int, float]], as_of: int) -> dict[str, float | int]:
    """amount_mean_1h and txn_count_10m as the feature set defines them."""
    hour = [a for t, a in events if window_start(as_of, 60 * MIN) <= t < as_of]
    ten = [a for t, a in events if window_start(as_of, 10 * MIN) <= t < as_of]
    result: dict[str, float | int] = {"txn_count_10m": len(ten)}
    if hour:
        result["amount_mean_1h"] = sum(hour) / len(hour)
    return result


def observation(amount: float) -> dict[str, float | int | str]:
    return {"amount": amount, "channel": "web", "hour": 3}


def test_random_stream_matches_reference_at_every_event() -> None:
    math = FeatureMath(FS)
    state = EntityState()
    rng = random.Random(7)
    seen: list[tuple[int, float]] = []
    t = T0
    for i in range(400):
        t += rng.randint(0, 4 * MIN)
        # Some events arrive late, but within the 5-minute grace period.
        event_time = t - rng.randint(0, 4 * MIN) if rng.random() < 0.2 else t
        amount = round(rng.uniform(0, 500), 2)
        row = math.point_in_time_row(state, event_time, observation(amount))
        expected = reference(seen, event_time)
        assert row["txn_count_10m"] == expected["txn_count_10m"]
        assert row.get("amount_mean_1h") == pytest.approx(expected.get("amount_mean_1h"))
        assert row["amount"] == amount, "the row carries the event's own raw fields"
        assert math.apply(state, f"e{i}", event_time, observation(amount)) is Outcome.APPLIED
        seen.append((event_time, amount))


def test_point_in_time_excludes_the_event_itself_and_later_ones() -> None:
    math = FeatureMath(FS)
    state = EntityState()
    for i, minute in enumerate([0, 1, 2, 5]):
        math.apply(state, f"e{i}", T0 + minute * MIN, observation(10.0 * (i + 1)))
    # As of minute 2: only the events at minutes 0 and 1 count.
    aggregates = math.aggregates_as_of(state, T0 + 2 * MIN)
    assert aggregates == {"amount_mean_1h": 15.0, "txn_count_10m": 2}


def test_a_replayed_event_changes_nothing() -> None:
    math = FeatureMath(FS)
    state = EntityState()
    math.apply(state, "e1", T0, observation(10.0))
    before = state.to_json()
    assert math.apply(state, "e1", T0, observation(10.0)) is Outcome.DUPLICATE
    assert state.to_json() == before


def test_late_beyond_grace_is_refused_and_within_grace_is_counted() -> None:
    math = FeatureMath(FS)
    state = EntityState()
    math.apply(state, "now", T0 + 30 * MIN, observation(1.0))
    assert math.apply(state, "late-ok", T0 + 26 * MIN, observation(3.0)) is Outcome.APPLIED
    assert math.apply(state, "too-late", T0 + 24 * MIN, observation(5.0)) is Outcome.TOO_LATE
    aggregates = math.aggregates_as_of(state, T0 + 31 * MIN)
    assert aggregates == {"amount_mean_1h": 2.0, "txn_count_10m": 2}


def test_an_event_beyond_the_wall_clock_and_grace_leaves_the_state_untouched() -> None:
    math = FeatureMath(FS)
    state = EntityState()
    now = T0 + 60 * MIN
    math.apply(state, "real", now - MIN, observation(1.0), now_ms=now)
    before = state.to_json()
    far = now + 365 * 24 * 60 * MIN
    assert math.apply(state, "far", far, observation(9.0), now_ms=now) is Outcome.FUTURE
    assert math.apply(state, "just", now + 5 * MIN + 1, observation(9.0), now_ms=now) is (
        Outcome.FUTURE
    )
    assert state.to_json() == before
    # Within the grace period ahead (clock skew) an event counts, and so do real
    # ones after it: the entity's clock moved by at most the grace period.
    assert math.apply(state, "skewed", now + 5 * MIN, observation(2.0), now_ms=now) is (
        Outcome.APPLIED
    )
    assert math.apply(state, "next", now, observation(3.0), now_ms=now) is Outcome.APPLIED
    assert math.aggregates_as_of(state, now + 5 * MIN + 1)["txn_count_10m"] == 3


def test_old_events_leave_the_state_once_no_window_can_see_them() -> None:
    math = FeatureMath(FS)
    state = EntityState()
    math.apply(state, "old", T0, observation(1.0))
    math.apply(state, "new", T0 + 2 * 60 * MIN, observation(2.0))
    assert [e.event_id for e in state.events] == ["new"]


def test_state_survives_its_json_form() -> None:
    math = FeatureMath(FS)
    state = EntityState()
    math.apply(state, "a", T0, observation(1.5))
    math.apply(state, "b", T0 + MIN, {"amount": 2.5, "channel": "pos", "hour": 4})
    again = EntityState.from_json(state.to_json())
    assert again == state


def test_online_lookup_statuses() -> None:
    math = FeatureMath(FS)
    state = EntityState()
    math.apply(state, "a", T0, observation(4.0))
    names = ["amount", "channel", "amount_mean_1h", "txn_count_10m"]
    values, statuses = math.online(state, names, as_of_ms=None, now_ms=T0 + MIN)
    assert values == {"amount": 4.0, "channel": "web", "amount_mean_1h": 4.0, "txn_count_10m": 1}
    assert set(statuses.values()) == {FeatureStatus.PRESENT}
    stale_now = T0 + int(FS.staleness / timedelta(milliseconds=1)) + MIN
    _, statuses = math.online(state, names, as_of_ms=None, now_ms=stale_now)
    assert statuses["amount"] is FeatureStatus.STALE
    # Long after the event, no window holds it: the mean is not found, the count is 0.
    values, statuses = math.online(state, names, as_of_ms=None, now_ms=T0 + 2 * 60 * MIN)
    assert statuses["amount_mean_1h"] is FeatureStatus.NOT_FOUND
    assert values["txn_count_10m"] == 0
