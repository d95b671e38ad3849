"""What the feature store does with each record of `events.valid`, as outcomes.

An observation comes to its point-in-time row, to be published to
`features.offline` for the offline log, and then to be counted in its entity's
state; a late label is forwarded to the offline log, where it is joined to its
row. `StreamHandler.handle` decides (it publishes nothing and changes no
state); the agent (`entrypoints.events`) publishes, then `count`s, and once a
batch of records is counted `save`s each entity they changed to the table. The
row is published for replays too (the offline log keeps one row per event id),
so a crash between publishing and saving can lose nothing; the state itself
counts an event once, recognised by its id or by its position on
`events.valid`. Records that cannot be decoded, observations too
late to be counted (rule `late`), and observations later than the wall clock
plus the grace period (rule `future`: counted, one would move its entity's
clock ahead and make every real event after it late) come back as the
`PoisonMessage` to dead-letter, and change no state.

Whoever can write `events.valid` can write any event time; ingestion refuses
times ahead of its clock, and this holds the same line for records that came
some other way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from driftloop.v1 import events_pb2, features_pb2
from driftloop_core.feature_math import EntityState, FeatureMath, Outcome, Position, Value
from driftloop_core.kafka import Outgoing, PoisonMessage, Record, Topics
from driftloop_core.kafka.topics import kind_of_message
from driftloop_core.values import from_feature_value, to_feature_value
from google.protobuf.message import DecodeError

from driftloop_features.offline import offline_label, offline_row

OBSERVED = kind_of_message("driftloop.v1.Observation").ce_type
LABELLED = kind_of_message("driftloop.v1.Label").ce_type


class EntityStates(Protocol):
    """The per-entity state table (a Faust table in production, a dict in tests)."""

    def get(self, key: str) -> Any: ...

    def items(self) -> Any: ...

    def __setitem__(self, key: str, value: Any) -> None: ...


@dataclass(frozen=True)
class Observed:
    """An observation to count once its row is published; `position` is where it
    was read (partition, offset), by which its replay is recognised."""

    entity_id: str
    event_id: str
    event_time_ms: int
    values: Mapping[str, Value]
    position: Position | None = None


@dataclass(frozen=True)
class Handled:
    """What one record comes to: records to publish, then the observation to
    count; or the poison to dead-letter (and nothing else)."""

    publish: tuple[Outgoing, ...] = ()
    observed: Observed | None = None
    poison: PoisonMessage | None = None


class StreamHandler:
    """Turns `events.valid` records into outcomes, and counts observations in the
    entity states."""

    def __init__(
        self,
        math: FeatureMath,
        table: EntityStates,
        *,
        cache: MutableMapping[str, EntityState] | None = None,
        offline_topic: str = Topics.FEATURES_OFFLINE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`clock`: the wall clock in epoch seconds, which no entity's clock may
        pass by more than the grace period."""
        self._math = math
        self._table = table
        self.cache: MutableMapping[str, EntityState] = cache if cache is not None else {}
        self._offline_topic = offline_topic
        self._clock = clock

    def state(self, entity_id: str) -> EntityState:
        cached = self.cache.get(entity_id)
        if cached is None:
            cached = EntityState.from_json(self._table.get(entity_id))
            self.cache[entity_id] = cached
        return cached

    def known(self, entity_id: str) -> EntityState | None:
        """The entity's state for a lookup: from memory, else decoded from the
        table once (an entity of a partition this worker was just assigned), or
        None when the table has never seen it (kept out of memory: a caller
        asking for made-up ids must not grow it)."""
        cached = self.cache.get(entity_id)
        if cached is None:
            data = self._table.get(entity_id)
            if data is None:
                return None
            cached = self.cache[entity_id] = EntityState.from_json(data)
        return cached

    def forget_all(self) -> None:
        """Drop every state held in memory (the table keeps them): after a
        rebalance this worker may own other partitions, and a state of one it
        owned before would be stale if the partition comes back."""
        self.cache.clear()

    def load_all(self) -> int:
        """Decode every entity of the table into the in-memory cache, except those
        the stream already holds: an event being applied (suspended while its row
        is sent) updates the cached state, which a fresh copy of the table row
        would silently replace."""
        for entity_id, data in self._table.items():
            if entity_id not in self.cache:
                self.cache[entity_id] = EntityState.from_json(data)
        return len(self.cache)

    def handle(self, record: Record) -> Handled:
        """The outcome of one record; changes no state."""
        try:
            return self._dispatch(record)
        except PoisonMessage as poison:
            return Handled(poison=poison)

    def count(self, observed: Observed) -> Outcome:
        """Add a published observation to its entity's state in memory (once per
        event); what is `APPLIED` is in the table once the entity is `save`d."""
        return self._math.apply(
            self.state(observed.entity_id),
            observed.event_id,
            observed.event_time_ms,
            observed.values,
            now_ms=self._now_ms(),
            position=observed.position,
        )

    def save(self, entity_id: str) -> None:
        """Write an entity's state to the table: once per batch, after the rows of
        every observation it counts are published."""
        self._table[entity_id] = self.state(entity_id).to_json()

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _dispatch(self, record: Record) -> Handled:
        if record.headers.type == OBSERVED:
            observation = _decode(events_pb2.Observation, record)
            return self._observation(observation, (record.partition, record.offset))
        if record.headers.type == LABELLED:
            label = _decode(events_pb2.Label, record)
            publish = offline_label(label, event_id=record.headers.id, topic=self._offline_topic)
            return Handled(publish=(publish,))
        raise PoisonMessage(
            f"ce_type: unknown event type {record.headers.type!r} on {record.topic}",
            field="ce_type",
            rule="type",
        )

    def _observation(self, observation: events_pb2.Observation, position: Position) -> Handled:
        entity = observation.entity_id
        event_time_ms = observation.event_time.ToMilliseconds()
        values = {
            name: plain
            for name, value in observation.values.items()
            if (plain := from_feature_value(value)) is not None
        }
        state = self.state(entity)
        if self._math.is_replay(state, observation.event_id, event_time_ms, position):
            # A replay: publish the same row again (the log keeps one), count nothing.
            pass
        elif event_time_ms < self._math.horizon_ms(state):
            raise PoisonMessage(
                f"event_time: {event_time_ms} is older than the entity's latest event "
                f"({state.latest_time_ms}) minus the grace period; it can no longer be counted",
                field="event_time",
                rule="late",
                event_id=observation.event_id,
            )
        elif event_time_ms > self._math.latest_allowed_ms(now_ms := self._now_ms()):
            raise PoisonMessage(
                f"event_time: {_iso(event_time_ms)} is later than the wall clock "
                f"({_iso(now_ms)}) plus the grace period ({self._math.grace_ms // 1000}s); "
                f"counted, it would move entity {entity[:64]!r}'s clock into the future and "
                "make every event after it too late",
                field="event_time",
                rule="future",
                event_id=observation.event_id,
            )
        row_values = self._math.point_in_time_row(state, event_time_ms, values)
        row = features_pb2.TrainingRow(
            event_id=observation.event_id,
            entity_id=entity,
            event_time=observation.event_time,
            features={k: to_feature_value(v) for k, v in row_values.items()},
            label=observation.label if observation.HasField("label") else 0,
        )
        publish = offline_row(
            row, has_label=observation.HasField("label"), topic=self._offline_topic
        )
        observed = Observed(entity, observation.event_id, event_time_ms, values, position)
        return Handled(publish=(publish,), observed=observed)


def _iso(epoch_ms: int) -> str:
    """An epoch-milliseconds time as RFC 3339 (or the number, past the year 9999)."""
    try:
        moment = datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)
    except (OverflowError, ValueError, OSError):
        return f"{epoch_ms} ms"
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _decode(message_type: Any, record: Record) -> Any:
    try:
        return message_type.FromString(record.value)
    except DecodeError as error:
        raise PoisonMessage(
            f"value: not a {message_type.DESCRIPTOR.full_name}: {error}", rule="decode"
        ) from None
