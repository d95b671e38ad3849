"""Per-entity feature state and its point-in-time aggregates, by event time.

This is the feature store's arithmetic, kept free of Faust, Kafka and gRPC so
it can be tested against a plain reference and reused by the online lookup and
the offline log alike.

What a window means. Each window of length W is cut into tiles of W/60 (a
1 h window into 1-minute tiles, 10 min into 10 s tiles). The aggregates *as of*
time t cover the entity's events with

    tile_start(t - W) <= event_time < t

where `tile_start` rounds down to the window's tile grid: the far edge of a
window moves a tile at a time (the window is between W and W + W/60 long), the
near edge is exact to the millisecond. The offline row of an event at t uses
exactly that, so it holds what serving saw just before the event, never the
event itself or anything later. Online lookups and offline rows share this one
definition, so training rows equal what serving saw.

What an entity keeps, so applying an event and answering a lookup cost the
same for an entity with ten events in its window as for one with a hundred
thousand:
- per window, the tiles that a window ending at or after its horizon (latest
  event time minus the grace period) can reach: count, sum, min, max and the
  last value of each aggregated field, about 60 tiles plus the grace period's;
- the raw events of the grace period (rounded out to whole tiles): a late
  event lands among them, and the near edge of its window is exact only with
  them; they also let a duplicate of a recent event be recognised by its id;
- the position (partition, offset) of the latest event counted from each
  partition: a replay after a crash (the state was saved, the offset not yet
  committed) is recognised by its position however old it is, without keeping
  its id.

An event older than the horizon is refused as too late rather than counted
against tiles that may already be gone. A lookup as of a time before the
horizon is answered at tile resolution: its near edge falls back to the start
of the tile holding it.

An entity's clock is its latest event time, and the horizon trails it by the
grace period; so one event from far ahead would drop the entity's history and
make every real event after it too late. Given the wall clock (`now_ms`), an
event later than now plus the grace period is refused as from the future and
leaves the state untouched: the clock never runs ahead of the wall clock by
more than the lateness it tolerates.
"""

from __future__ import annotations

import bisect
import operator
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from driftloop_core.featureset import Aggregation, FeatureSet

Value = float | int | str | bool
Position = tuple[int, int]

# A window's far edge moves in steps of window / TILES_PER_WINDOW.
TILES_PER_WINDOW = 60
# Raw events kept per entity at most, whatever its rate (see `FeatureMath`).
RAW_EVENTS_KEPT = 1_000
_NEVER = -(2**62)
STATE_FORMAT = 2

# Events are ordered by (time, id); searching by time alone finds the same
# boundaries as a probe event with the smallest id, without building one.
_EVENT_TIME = operator.attrgetter("event_time_ms")

# One aggregated field in one tile: [count, sum, min, max, last_time, last_id, last_value].
# Plain lists: they go to JSON as they are, and updating one in place is cheap.
_COUNT, _SUM, _MIN, _MAX, _LAST_TIME, _LAST_ID, _LAST_VALUE = range(7)
Stats = list[Any]
Tile = list[Stats]
_LAST_KEY = operator.itemgetter(_LAST_TIME, _LAST_ID)


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

    # The raw events of the grace period, in (time, id) order.
    events: list[StoredEvent] = field(default_factory=list)
    latest: dict[str, Value] = field(default_factory=dict)
    latest_time_ms: int = 0
    # Window (ms) -> tile start (ms) -> one `Stats` per field aggregated over it.
    tiles: dict[int, dict[int, Tile]] = field(default_factory=dict)
    # Partition -> offset of the latest event counted from it.
    positions: dict[int, int] = field(default_factory=dict)
    # The raw events hold every event from this time on (see `FeatureMath.raw_kept`).
    raw_from_ms: int = _NEVER
    # Events of a state saved before tiles existed, folded in on first use.
    legacy: list[StoredEvent] = field(default_factory=list)
    _ids: set[str] | None = field(default=None, compare=False, repr=False)
    # Window -> (first, near, stats of the whole tiles in [first, near)).
    _cache: dict[int, tuple[int, int, list[Stats]]] = field(
        default_factory=dict, compare=False, repr=False
    )

    @property
    def empty(self) -> bool:
        return not self.events and not self.legacy

    def contains(self, event_id: str) -> bool:
        """Whether an event of the grace period has this id (a set, not a scan)."""
        if self._ids is None:
            self._ids = {event.event_id for event in self.events}
        return event_id in self._ids

    # Faust tables hold JSON; these two keep the format in one place.
    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "format": STATE_FORMAT,
            "events": [[e.event_time_ms, e.event_id, dict(e.values)] for e in self.events],
            "latest": self.latest,
            "latest_time_ms": self.latest_time_ms,
            "tiles": {
                str(window): [[start, tile] for start, tile in tiles.items()]
                for window, tiles in self.tiles.items()
            },
            "positions": {str(p): o for p, o in self.positions.items()},
            "raw_from_ms": self.raw_from_ms,
        }
        if self.legacy:
            data["legacy"] = [[e.event_time_ms, e.event_id, dict(e.values)] for e in self.legacy]
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> EntityState:
        if not data:
            return cls()
        events = [StoredEvent(int(t), str(i), dict(v)) for t, i, v in data["events"]]
        if data.get("format") != STATE_FORMAT:
            # Saved before tiles: every event of the longest window; `FeatureMath`
            # folds them into tiles the first time it touches the state.
            return cls(
                latest=dict(data["latest"]),
                latest_time_ms=int(data["latest_time_ms"]),
                legacy=events,
            )
        return cls(
            events=events,
            latest=dict(data["latest"]),
            latest_time_ms=int(data["latest_time_ms"]),
            tiles={
                int(window): {int(start): tile for start, tile in tiles}
                for window, tiles in data["tiles"].items()
            },
            positions={int(p): int(o) for p, o in data.get("positions", {}).items()},
            raw_from_ms=int(data.get("raw_from_ms", _NEVER)),
            legacy=[StoredEvent(int(t), str(i), dict(v)) for t, i, v in data.get("legacy", ())],
        )


@dataclass(frozen=True)
class _Window:
    """One distinct window length of the feature set and what is aggregated over it."""

    window_ms: int
    tile_ms: int
    fields: tuple[str, ...]
    # (aggregation, index of its field in `fields`), in declaration order.
    aggregations: tuple[tuple[Aggregation, int], ...]
    # Per field: whether any aggregation over it needs min/max, or the last value.
    extremes: tuple[bool, ...]
    lasts: tuple[bool, ...]

    def tile_of(self, time_ms: int) -> int:
        return time_ms - time_ms % self.tile_ms


class FeatureMath:
    """The feature set's aggregations, applied to entity states."""

    def __init__(self, featureset: FeatureSet, *, raw_kept: int = RAW_EVENTS_KEPT) -> None:
        """`raw_kept`: the most raw events an entity keeps. An entity with more
        events in its grace period keeps its latest `raw_kept`; a late event
        older than those is still counted, and its row's near edge falls back
        to the start of its tile (never past the event)."""
        self.featureset = featureset
        self.raw_kept = raw_kept
        self.fields = tuple(featureset.fields)
        self.aggregations = featureset.aggregations
        self.grace_ms = int(featureset.grace.total_seconds() * 1000)
        self.staleness_ms = int(featureset.staleness.total_seconds() * 1000)
        self.feature_names = featureset.feature_names
        self._feature_names = frozenset(self.feature_names)
        self._windows = _windows_of(self.aggregations)
        self._aggregated = frozenset(f for w in self._windows for f in w.fields)
        self._order = {a.name: i for i, a in enumerate(self.aggregations)}

    def horizon_ms(self, state: EntityState) -> int:
        """Events older than this cannot be counted any more."""
        return state.latest_time_ms - self.grace_ms if not state.empty else _NEVER

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
        position: Position | None = None,
    ) -> Outcome:
        """Add one observation to the state (in place) unless it is known, too late,
        or (given the wall clock `now_ms`) from the future. `position` is where the
        event was read (partition, offset), remembered to recognise its replay."""
        self._upgrade(state)
        if self.is_replay(state, event_id, event_time_ms, position):
            return Outcome.DUPLICATE
        if event_time_ms < self.horizon_ms(state):
            return Outcome.TOO_LATE
        if now_ms is not None and event_time_ms > self.latest_allowed_ms(now_ms):
            return Outcome.FUTURE
        self._fold(state, StoredEvent(event_time_ms, event_id, self._kept(values)))
        if event_time_ms >= state.latest_time_ms:
            state.latest = {k: v for k, v in values.items() if k in self.featureset.fields}
            state.latest_time_ms = event_time_ms
        if position is not None:
            partition, offset = position
            state.positions[partition] = max(offset, state.positions.get(partition, -1))
        self._trim(state)
        return Outcome.APPLIED

    def is_replay(
        self,
        state: EntityState,
        event_id: str,
        event_time_ms: int,
        position: Position | None = None,
    ) -> bool:
        """Whether this event is already counted: its id is among the grace
        period's events, or its position was counted already.

        A position counts as a replay only for an event no later than the
        entity's clock (a replayed event always is), so a topic recreated from
        offset 0 does not swallow new events."""
        self._upgrade(state)
        if state.contains(event_id):
            return True
        if position is None or event_time_ms > state.latest_time_ms:
            return False
        partition, offset = position
        saved = state.positions.get(partition)
        return saved is not None and offset <= saved

    def _kept(self, values: Mapping[str, Value]) -> dict[str, Value]:
        return {k: v for k, v in values.items() if k in self._aggregated}

    def _fold(self, state: EntityState, event: StoredEvent) -> None:
        """Count one event into its tiles and the raw events."""
        bisect.insort(state.events, event)
        if state._ids is not None:
            state._ids.add(event.event_id)
        time_ms = event.event_time_ms
        for window in self._windows:
            tiles = state.tiles.setdefault(window.window_ms, {})
            start = window.tile_of(time_ms)
            cached = state._cache.get(window.window_ms)
            if cached is not None and cached[0] <= start < cached[1]:
                del state._cache[window.window_ms]
            tile = tiles.get(start)
            if tile is None:
                tile = tiles[start] = [_empty_stats() for _ in window.fields]
            for stats, name in zip(tile, window.fields, strict=True):
                value = event.values.get(name)
                if value is not None:
                    _add(stats, time_ms, event.event_id, value)

    def _trim(self, state: EntityState) -> None:
        """Drop what no window ending at or after the horizon can reach."""
        horizon = state.latest_time_ms - self.grace_ms
        first_raw = min((w.tile_of(horizon) for w in self._windows), default=horizon)
        events = state.events
        cut = 0
        if events and events[0].event_time_ms < first_raw:
            cut = bisect.bisect_left(events, first_raw, key=_EVENT_TIME)
        if len(events) - cut > self.raw_kept:
            cut = len(events) - self.raw_kept
            # Raw events are whole only after the last time one was dropped at.
            state.raw_from_ms = max(state.raw_from_ms, events[cut - 1].event_time_ms + 1)
        if cut:
            if state._ids is not None:
                state._ids.difference_update(e.event_id for e in events[:cut])
            del events[:cut]
        for window in self._windows:
            tiles = state.tiles.get(window.window_ms)
            if not tiles:
                continue
            oldest = window.tile_of(horizon - window.window_ms)
            if min(tiles) < oldest:
                for start in [s for s in tiles if s < oldest]:
                    del tiles[start]
                state._cache.pop(window.window_ms, None)

    def _upgrade(self, state: EntityState) -> None:
        """Fold the events of a state saved before tiles existed."""
        if not state.legacy:
            return
        events, state.legacy = state.legacy, []
        for event in sorted(events):
            self._fold(state, StoredEvent(event.event_time_ms, event.event_id, event.values))
        self._trim(state)

    def aggregates_as_of(self, state: EntityState, as_of_ms: int) -> dict[str, Value]:
        """Every aggregation over the events of its window as of `as_of_ms` (see the
        module docstring). An aggregation with no event in its window is absent,
        except `count`, which is 0."""
        self._upgrade(state)
        found: dict[str, Value] = {}
        for window in self._windows:
            stats = self._window_stats(state, window, as_of_ms)
            for aggregation, index in window.aggregations:
                value = _result(aggregation.fn, stats[index])
                if value is not None:
                    found[aggregation.name] = value
        if len(self._windows) < 2:
            return found
        order = self._order
        return dict(sorted(found.items(), key=lambda item: order[item[0]]))

    def _window_stats(self, state: EntityState, window: _Window, as_of_ms: int) -> list[Stats]:
        """Each field's stats over the window ending at `as_of_ms`: whole tiles,
        then the near tile's events before `as_of` from the raw events."""
        tiles = state.tiles.get(window.window_ms)
        if not tiles:
            return [_empty_stats() for _ in window.fields]
        first = window.tile_of(as_of_ms - window.window_ms)
        near = window.tile_of(as_of_ms)
        stats = [list(part) for part in self._whole_tiles(state, window, tiles, first, near)]
        near_tile = tiles.get(near)
        if near_tile is None:
            return stats
        if as_of_ms > state.latest_time_ms:
            # Every event of the near tile is before `as_of` (the serving path,
            # and every in-order event): the tile counts whole.
            for total, part in zip(stats, near_tile, strict=True):
                _merge(total, part)
            return stats
        if self._raw_from(state) <= near:
            events = state.events
            lo = bisect.bisect_left(events, near, key=_EVENT_TIME)
            hi = bisect.bisect_left(events, as_of_ms, lo=lo, key=_EVENT_TIME)
            for event in events[lo:hi]:
                for total, name in zip(stats, window.fields, strict=True):
                    value = event.values.get(name)
                    if value is not None:
                        _add(total, event.event_time_ms, event.event_id, value)
        # Otherwise `as_of` is before the raw events kept: the near edge falls
        # back to the start of its tile.
        return stats

    def _whole_tiles(
        self, state: EntityState, window: _Window, tiles: dict[int, Tile], first: int, near: int
    ) -> list[Stats]:
        """Each field's stats over the tiles in [first, near), kept until a tile
        among them changes (in-order events only change the near tile)."""
        cached = state._cache.get(window.window_ms)
        if cached is not None and cached[0] == first and cached[1] == near:
            return cached[2]
        chosen = [tile for start, tile in tiles.items() if first <= start < near]
        stats = [
            _combine([tile[i] for tile in chosen], extremes, last)
            for i, (extremes, last) in enumerate(zip(window.extremes, window.lasts, strict=True))
        ]
        state._cache[window.window_ms] = (first, near, stats)
        return stats

    def _raw_from(self, state: EntityState) -> int:
        """From this time on, the raw events hold every event counted."""
        horizon = state.latest_time_ms - self.grace_ms
        band = min((w.tile_of(horizon) for w in self._windows), default=horizon)
        return max(band, state.raw_from_ms)

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
        stale = state.empty or reference - state.latest_time_ms > self.staleness_ms
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


def tile_ms(window_ms: int) -> int:
    """The tile length of a window: a sixtieth of it, at least a millisecond."""
    return max(1, window_ms // TILES_PER_WINDOW)


def window_start(as_of_ms: int, window_ms: int) -> int:
    """The far edge of a window as of `as_of_ms`: the start of the tile holding
    `as_of_ms - window_ms` (the definition the module docstring gives)."""
    tile = tile_ms(window_ms)
    return (as_of_ms - window_ms) // tile * tile


def _windows_of(aggregations: Iterable[Aggregation]) -> tuple[_Window, ...]:
    by_window: dict[int, list[Aggregation]] = {}
    for aggregation in aggregations:
        window_ms = int(aggregation.window.total_seconds() * 1000)
        by_window.setdefault(window_ms, []).append(aggregation)
    windows = []
    for window_ms, members in by_window.items():
        fields = tuple(dict.fromkeys(a.field for a in members))
        fns = [{a.fn for a in members if a.field == name} for name in fields]
        windows.append(
            _Window(
                window_ms,
                tile_ms(window_ms),
                fields,
                tuple((a, fields.index(a.field)) for a in members),
                extremes=tuple(bool(f & {"min", "max"}) for f in fns),
                lasts=tuple("last" in f for f in fns),
            )
        )
    return tuple(windows)


def _empty_stats() -> Stats:
    return [0, 0.0, None, None, None, None, None]


def _add(stats: Stats, time_ms: int, event_id: str, value: Value) -> None:
    stats[_COUNT] += 1
    if not isinstance(value, str):
        number = float(value)
        stats[_SUM] += number
        if stats[_MIN] is None or number < stats[_MIN]:
            stats[_MIN] = number
        if stats[_MAX] is None or number > stats[_MAX]:
            stats[_MAX] = number
    last = stats[_LAST_TIME]
    if last is None or (time_ms, event_id) > (last, stats[_LAST_ID]):
        stats[_LAST_TIME], stats[_LAST_ID], stats[_LAST_VALUE] = time_ms, event_id, value


def _combine(parts: list[Stats], extremes: bool, last: bool) -> Stats:
    """One field's stats over several tiles; min, max and the last value only
    when an aggregation needs them (they cost the most)."""
    total = _empty_stats()
    count = 0
    summed = 0.0
    for part in parts:
        count += part[_COUNT]
        summed += part[_SUM]
    total[_COUNT] = count
    total[_SUM] = summed
    if not count:
        return total
    present = [p for p in parts if p[_COUNT]] if extremes or last else []
    if extremes:
        total[_MIN] = min((p[_MIN] for p in present if p[_MIN] is not None), default=None)
        total[_MAX] = max((p[_MAX] for p in present if p[_MAX] is not None), default=None)
    if last:
        latest = max(present, key=_LAST_KEY)
        total[_LAST_TIME] = latest[_LAST_TIME]
        total[_LAST_ID] = latest[_LAST_ID]
        total[_LAST_VALUE] = latest[_LAST_VALUE]
    return total


def _merge(total: Stats, part: Stats) -> None:
    """Add one tile's stats of a field to a running total."""
    if not part[_COUNT]:
        return
    total[_COUNT] += part[_COUNT]
    total[_SUM] += part[_SUM]
    if part[_MIN] is not None and (total[_MIN] is None or part[_MIN] < total[_MIN]):
        total[_MIN] = part[_MIN]
    if part[_MAX] is not None and (total[_MAX] is None or part[_MAX] > total[_MAX]):
        total[_MAX] = part[_MAX]
    if total[_LAST_TIME] is None or _LAST_KEY(part) > _LAST_KEY(total):
        total[_LAST_TIME] = part[_LAST_TIME]
        total[_LAST_ID] = part[_LAST_ID]
        total[_LAST_VALUE] = part[_LAST_VALUE]


def _result(fn: str, stats: Stats) -> Value | None:
    count = stats[_COUNT]
    if fn == "count":
        return int(count)
    if not count:
        return None
    if fn == "last":
        return stats[_LAST_VALUE]  # type: ignore[no-any-return]
    if fn == "sum":
        return float(stats[_SUM])
    if fn == "mean":
        return float(stats[_SUM]) / int(count)
    if fn == "min":
        return stats[_MIN]  # type: ignore[no-any-return]
    if fn == "max":
        return stats[_MAX]  # type: ignore[no-any-return]
    raise ValueError(f"unknown aggregation function {fn}")
