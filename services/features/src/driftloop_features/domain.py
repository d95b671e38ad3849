"""Per-entity feature state and its point-in-time aggregates, by event time.

This is the feature store's arithmetic, kept free of Faust, Kafka and gRPC so
it can be tested against a plain reference and reused by the online lookup and
the offline log alike. One rule defines every number: the aggregates *as of*
time t cover the entity's events with `t - window <= event_time < t`. The
offline row of an event at t uses exactly that, so it holds what serving saw
just before the event, never the event itself or anything later.

The state keeps each event inside the longest window plus the grace period, in
event-time order, with its id: a late event (within grace) is inserted where it
belongs, a replayed one is recognised by its id and changes nothing, and an
event older than the retained horizon is refused as too late rather than
counted against an incomplete history.

An entity's clock is its latest event time, and the horizon trails it by the
grace period; so one event from far ahead would drop the entity's history and
make every real event after it too late. Given the wall clock (`now_ms`), an
event later than now plus the grace period is refused as from the future and
leaves the state untouched: the clock never runs ahead of the wall clock by
more than the lateness it tolerates.
"""

from __future__ import annotations

import bisect
import math
import operator
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from driftloop_core.featureset import Aggregation, FeatureSet

Value = float | int | str | bool

# Events are ordered by (time, id); searching by time alone finds the same
# boundaries as a probe event with the smallest id, without building one.
_EVENT_TIME = operator.attrgetter("event_time_ms")


class Outcome(Enum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    TOO_LATE = "too_late"
    FUTURE = "future"


@dataclass(frozen=True, order=True)
class StoredEvent:
    event_time_ms: int
    event_id: str
    values: Mapping[str, Value] = field(compare=False)


@dataclass
class EntityState:
    """Everything the store remembers about one entity."""

    events: list[StoredEvent] = field(default_factory=list)
    latest: dict[str, Value] = field(default_factory=dict)
    latest_time_ms: int = 0

    def contains(self, event_id: str) -> bool:
        return any(event.event_id == event_id for event in self.events)

    # Faust tables hold JSON; these two keep the format in one place.
    def to_json(self) -> dict[str, Any]:
        return {
            "events": [[e.event_time_ms, e.event_id, dict(e.values)] for e in self.events],
            "latest": self.latest,
            "latest_time_ms": self.latest_time_ms,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> EntityState:
        if not data:
            return cls()
        return cls(
            events=[StoredEvent(int(t), str(i), dict(v)) for t, i, v in data["events"]],
            latest=dict(data["latest"]),
            latest_time_ms=int(data["latest_time_ms"]),
        )


class FeatureMath:
    """The feature set's aggregations, applied to entity states."""

    def __init__(self, featureset: FeatureSet) -> None:
        self.featureset = featureset
        self.fields = tuple(featureset.fields)
        self.aggregations = featureset.aggregations
        longest = max((a.window for a in self.aggregations), default=featureset.grace)
        self.grace_ms = int(featureset.grace.total_seconds() * 1000)
        self.retention_ms = int(longest.total_seconds() * 1000) + self.grace_ms
        self.staleness_ms = int(featureset.staleness.total_seconds() * 1000)
        self.feature_names = featureset.feature_names
        self._feature_names = frozenset(self.feature_names)
        # Precomputed once: (aggregation, its window in ms) in declaration order.
        self._windows = tuple((a, int(a.window.total_seconds() * 1000)) for a in self.aggregations)

    def horizon_ms(self, state: EntityState) -> int:
        """Events older than this cannot be counted any more."""
        return state.latest_time_ms - self.grace_ms if state.events else -(2**62)

    def latest_allowed_ms(self, now_ms: int) -> int:
        """Events later than this (the wall clock `now_ms` plus the grace period)
        are from the future: counting one would move its entity's clock past it."""
        return now_ms + self.grace_ms

    def apply(
        self,
        state: EntityState,
        event_id: str,
        event_time_ms: int,
        values: Mapping[str, Value],
        *,
        now_ms: int | None = None,
    ) -> Outcome:
        """Add one observation to the state (in place) unless it is known, too late,
        or (given the wall clock `now_ms`) from the future."""
        if state.contains(event_id):
            return Outcome.DUPLICATE
        if event_time_ms < self.horizon_ms(state):
            return Outcome.TOO_LATE
        if now_ms is not None and event_time_ms > self.latest_allowed_ms(now_ms):
            return Outcome.FUTURE
        bisect.insort(state.events, StoredEvent(event_time_ms, event_id, dict(values)))
        if event_time_ms >= state.latest_time_ms:
            state.latest = {k: v for k, v in values.items() if k in self.featureset.fields}
            state.latest_time_ms = event_time_ms
        cutoff = state.latest_time_ms - self.retention_ms
        first_kept = bisect.bisect_left(state.events, StoredEvent(cutoff, "", {}))
        if first_kept:
            del state.events[:first_kept]
        return Outcome.APPLIED

    def aggregates_as_of(self, state: EntityState, as_of_ms: int) -> dict[str, Value]:
        """Every aggregation over events with `as_of - window <= time < as_of`.

        An aggregation with no event in its window is absent, except `count`,
        which is 0.
        """
        events = state.events
        end = bisect.bisect_left(events, as_of_ms, key=_EVENT_TIME)
        starts: dict[int, int] = {}
        result: dict[str, Value] = {}
        for aggregation, window_ms in self._windows:
            # Aggregations over the same window share one search.
            start = starts.get(window_ms)
            if start is None:
                start = starts[window_ms] = bisect.bisect_left(
                    events, as_of_ms - window_ms, hi=end, key=_EVENT_TIME
                )
            value = self._aggregate(aggregation, events, start, end)
            if value is not None:
                result[aggregation.name] = value
        return result

    def _aggregate(
        self, aggregation: Aggregation, events: list[StoredEvent], start: int, end: int
    ) -> Value | None:
        name = aggregation.field
        window = [e.values[name] for e in events[start:end] if name in e.values]
        fn = aggregation.fn
        if fn == "count":
            return len(window)
        if not window:
            return None
        if fn == "last":
            return window[-1]
        numbers = [float(v) for v in window if not isinstance(v, str)]
        if fn == "sum":
            return math.fsum(numbers)
        if fn == "mean":
            return math.fsum(numbers) / len(numbers)
        if fn == "min":
            return min(numbers)
        if fn == "max":
            return max(numbers)
        raise ValueError(f"unknown aggregation function {fn}")

    def point_in_time_row(
        self, state: EntityState, event_time_ms: int, values: Mapping[str, Value]
    ) -> dict[str, Value]:
        """The feature vector logged for an event: its own raw fields and the
        aggregates just before it."""
        row: dict[str, Value] = {k: v for k, v in values.items() if k in self.featureset.fields}
        row.update(self.aggregates_as_of(state, event_time_ms))
        return row

    def online(
        self,
        state: EntityState,
        names: Iterable[str],
        *,
        as_of_ms: int | None,
        now_ms: int,
    ) -> tuple[dict[str, Value], dict[str, FeatureStatus]]:
        """Values and statuses of the requested features for a lookup.

        Without `as_of`, every event seen so far counts: the window ends just
        after the latest event or now, whichever is later.
        """
        values, status = self.lookup(state, names, as_of_ms=as_of_ms, now_ms=now_ms)
        statuses = {name: status if name in values else FeatureStatus.NOT_FOUND for name in names}
        return values, statuses

    def lookup(
        self,
        state: EntityState,
        names: Iterable[str],
        *,
        as_of_ms: int | None,
        now_ms: int,
    ) -> tuple[dict[str, Value], FeatureStatus]:
        """`online` for the serving path: the values of the requested features that
        have one, and the status they share (PRESENT or STALE); every other
        requested feature is NOT_FOUND."""
        reference = as_of_ms if as_of_ms is not None else max(now_ms, state.latest_time_ms + 1)
        aggregates = self.aggregates_as_of(state, reference)
        stale = not state.events or reference - state.latest_time_ms > self.staleness_ms
        latest = state.latest
        fields = self.featureset.fields
        known = self._feature_names
        values: dict[str, Value] = {}
        for name in names:
            value = latest.get(name) if name in fields else None
            if value is None:
                value = aggregates.get(name)
            if value is not None and name in known:
                values[name] = value
        return values, FeatureStatus.STALE if stale else FeatureStatus.PRESENT


class FeatureStatus(Enum):
    PRESENT = "present"
    NOT_FOUND = "not_found"
    STALE = "stale"
