"""Tiled aggregates equal a brute-force reference over every event kept whole.

Hypothesis drives one entity through random streams: event times that jump or
creep forward, late events anywhere within the grace period, events sharing a
millisecond, re-sent duplicates and replays of earlier positions. Before every
event, the point-in-time row, the online lookup and a lookup as of a random
recent time must equal what the window definition gives over the plain list
of counted events, for every aggregation function over two windows.
"""

from __future__ import annotations

import math

import pytest
from driftloop_core.feature_math import EntityState, FeatureMath, Outcome, window_start
from driftloop_core.featureset import parse_featureset
from hypothesis import given, settings
from hypothesis import strategies as st

SEC = 1_000
T0 = 1_763_800_000_000
GRACE = 30 * SEC
WINDOWS = {"1m": 60 * SEC, "10m": 600 * SEC}
FNS = ("count", "sum", "mean", "min", "max", "last")

FS = parse_featureset(
    {
        "name": "tiles",
        "entity": "account",
        "timestamp": "ts",
        "label": "y",
        "fields": {
            "amount": {"type": "float", "min": 0},
            "channel": {"type": "category", "values": ["web", "pos"]},
        },
        "aggregations": [
            {"name": f"amount_{fn}_{w}", "field": "amount", "fn": fn, "window": w}
            for w in WINDOWS
            for fn in FNS
        ]
        + [{"name": "channel_last_10m", "field": "channel", "fn": "last", "window": "10m"}],
        "model": {"features": ["amount"]},
        "grace": "30s",
    }
)

Counted = tuple[int, str, float, str]  # time, id, amount, channel


def reference(events: list[Counted], as_of: int) -> dict[str, object]:
    """Every aggregation as the module docstring of `domain` defines it."""
    expected: dict[str, object] = {}
    for w, window in WINDOWS.items():
        inside = sorted(e for e in events if window_start(as_of, window) <= e[0] < as_of)
        amounts = [e[2] for e in inside]
        expected[f"amount_count_{w}"] = len(amounts)
        if amounts:
            expected[f"amount_sum_{w}"] = math.fsum(amounts)
            expected[f"amount_mean_{w}"] = math.fsum(amounts) / len(amounts)
            expected[f"amount_min_{w}"] = min(amounts)
            expected[f"amount_max_{w}"] = max(amounts)
            expected[f"amount_last_{w}"] = amounts[-1]
        if w == "10m" and inside:
            expected["channel_last_10m"] = inside[-1][3]
    return expected


def assert_matches(found: dict[str, object], expected: dict[str, object], where: str) -> None:
    assert set(found) == set(expected), where
    for name, value in expected.items():
        if isinstance(value, float):
            assert found[name] == pytest.approx(value, rel=1e-9, abs=1e-9), f"{where}: {name}"
        else:
            assert found[name] == value, f"{where}: {name}"


step = st.tuples(
    st.sampled_from(["next", "next", "next", "late", "same_ms", "resend", "replay"]),
    st.integers(min_value=0, max_value=90 * SEC),  # how far the clock moves, or how late
    st.integers(min_value=0, max_value=50_000).map(lambda cents: cents / 100),
    st.sampled_from(["web", "pos"]),
    st.integers(min_value=0, max_value=10**6),  # which earlier event, for resend/replay
)


@settings(max_examples=150, deadline=None)
@given(st.lists(step, min_size=1, max_size=120))
def test_tiles_equal_the_brute_force_reference(steps: list[tuple]) -> None:
    fm = FeatureMath(FS)
    state = EntityState()
    counted: list[Counted] = []
    sent: list[tuple[int, str, float, str, int]] = []  # every event applied, with its offset
    clock = T0
    for offset, (kind, amount_ms, amount, channel, pick) in enumerate(steps):
        latest = max((e[0] for e in counted), default=T0)
        position = (0, offset)
        if kind in ("resend", "replay") and sent:
            time_ms, event_id, amount, channel, first_offset = sent[pick % len(sent)]
            if kind == "replay":
                position = (0, first_offset)
            outcome = fm.apply(
                state, event_id, time_ms, {"amount": amount, "channel": channel}, position=position
            )
            # Known ids are never counted twice: recognised, or too late to count.
            assert outcome in (Outcome.DUPLICATE, Outcome.TOO_LATE)
            if kind == "replay" or time_ms >= latest - GRACE:
                assert outcome is Outcome.DUPLICATE
            continue
        if kind == "late" and counted:
            time_ms = latest - amount_ms % (GRACE + 1)
        elif kind == "same_ms" and counted:
            time_ms = latest
        else:
            clock += amount_ms
            time_ms = max(clock, latest)
        event_id = f"e{offset}"
        values = {"amount": amount, "channel": channel}
        where = f"event {offset} ({kind}) at {time_ms - T0} ms"
        row = fm.point_in_time_row(state, time_ms, values)
        assert_matches(
            {k: v for k, v in row.items() if k not in values}, reference(counted, time_ms), where
        )
        assert fm.apply(state, event_id, time_ms, values, position=position) is Outcome.APPLIED
        counted.append((time_ms, event_id, amount, channel))
        sent.append((time_ms, event_id, amount, channel, offset))
        latest = max(latest, time_ms)
        # Serving now (everything counted so far) and as of a recent moment.
        online = fm.aggregates_as_of(state, latest + 1)
        assert_matches(online, reference(counted, latest + 1), f"{where}, online")
        for as_of in (latest - (pick % (GRACE + 1)), latest - GRACE):
            assert_matches(
                fm.aggregates_as_of(state, as_of), reference(counted, as_of), f"{where}, as of"
            )
        # The state survives its JSON form (Faust's table) unchanged.
        if offset % 7 == 0:
            state = EntityState.from_json(state.to_json())


def test_state_is_bounded_by_tiles_not_events() -> None:
    """A hot entity: 100,000 events, ten a second, in its windows; the state holds
    tiles and the grace period's raw events, and its JSON stays small."""
    fm = FeatureMath(FS)
    state = EntityState()
    for i in range(100_000):
        fm.apply(state, f"e{i}", T0 + i * 100, {"amount": 1.0, "channel": "web"}, position=(0, i))
    assert len(state.events) <= (GRACE + 10 * SEC) // 100 + 1
    assert all(len(tiles) <= 61 + GRACE // (w // 60) + 1 for w, tiles in state.tiles.items())
    as_of = T0 + 100_000 * 100
    assert fm.aggregates_as_of(state, as_of)["amount_count_10m"] == 6_000
    assert len(str(state.to_json())) < 200_000


def test_a_state_saved_before_tiles_is_folded_in() -> None:
    """A changelog written by the previous format (every event of the longest
    window) still gives the same aggregates."""
    fm = FeatureMath(FS)
    events = [
        [T0 + i * 5 * SEC, f"e{i}", {"amount": float(i), "channel": "web"}] for i in range(50)
    ]
    old = {"events": events, "latest": {"amount": 49.0}, "latest_time_ms": T0 + 49 * 5 * SEC}
    state = EntityState.from_json(old)
    as_of = T0 + 50 * 5 * SEC
    counted = [(t, i, v["amount"], v["channel"]) for t, i, v in events]
    assert_matches(fm.aggregates_as_of(state, as_of), reference(counted, as_of), "upgraded")
    assert fm.apply(state, "e48", T0 + 240 * SEC, {"amount": 48.0}) is Outcome.DUPLICATE
