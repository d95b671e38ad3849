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
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from driftloop_core.featureset import Aggregation, FeatureSet

Value = float | int | str | bool


class Outcome(Enum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    TOO_LATE = "too_late"


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

    def horizon_ms(self, state: EntityState) -> int:
        """Events older than this cannot be counted any more."""
        return state.latest_time_ms - self.grace_ms if state.events else -(2**62)

    def apply(
        self, state: EntityState, event_id: str, event_time_ms: int, values: Mapping[str, Value]
    ) -> Outcome:
        """Add one observation to the state (in place) unless it is known or too late."""
        if state.contains(event_id):
            return Outcome.DUPLICATE
        if event_time_ms < self.horizon_ms(state):
            return Outcome.TOO_LATE
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
        end = bisect.bisect_left(state.events, StoredEvent(as_of_ms, "", {}))
        result: dict[str, Value] = {}
        for aggregation in self.aggregations:
            value = self._aggregate(aggregation, state.events, end, as_of_ms)
            if value is not None:
                result[aggregation.name] = value
        return result

    def _aggregate(
        self, aggregation: Aggregation, events: list[StoredEvent], end: int, as_of_ms: int
    ) -> Value | None:
        start_ms = as_of_ms - int(aggregation.window.total_seconds() * 1000)
        start = bisect.bisect_left(events, StoredEvent(start_ms, "", {}), hi=end)
        window = [
            e.values[aggregation.field] for e in events[start:end] if aggregation.field in e.values
        ]
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
        reference = as_of_ms if as_of_ms is not None else max(now_ms, state.latest_time_ms + 1)
        aggregates = self.aggregates_as_of(state, reference)
        stale = not state.events or reference - state.latest_time_ms > self.staleness_ms
        values: dict[str, Value] = {}
        statuses: dict[str, FeatureStatus] = {}
        for name in names:
            value = state.latest.get(name) if name in self.featureset.fields else None
            if value is None:
                value = aggregates.get(name)
            if value is None or name not in self.feature_names:
                statuses[name] = FeatureStatus.NOT_FOUND
                continue
            values[name] = value
            statuses[name] = FeatureStatus.STALE if stale else FeatureStatus.PRESENT
        return values, statuses


class FeatureStatus(Enum):
    PRESENT = "present"
    NOT_FOUND = "not_found"
    STALE = "stale"
