"""What the feature store does with each record of `events.valid`.

An observation is turned into its point-in-time row (published to
`features.offline` for the offline log) and then added to its entity's state;
a late label is forwarded to the offline log, where it is joined to its row.
The row is published for replays too (the offline log keeps one row per event
id), so a crash between publishing and updating the state can lose nothing;
the state itself counts an event id once. Records that cannot be decoded, and
observations too late to be counted, are dead-lettered with their reason.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any, Protocol

import structlog
from driftloop.v1 import common_pb2, events_pb2, features_pb2
from driftloop_core.kafka.consumer import PoisonMessage, Record
from driftloop_core.kafka.deadletter import build_deadletter
from driftloop_core.kafka.headers import make_headers
from driftloop_core.kafka.topics import Topics, kind_of_message
from google.protobuf.message import DecodeError
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from prometheus_client import Counter

from driftloop_features.domain import EntityState, FeatureMath, Outcome, Value

log = structlog.get_logger(__name__)
tracer = trace.get_tracer("driftloop.features")

OBSERVED = "driftloop.event.observed.v1"
LABELLED = "driftloop.event.labelled.v1"

EVENTS = Counter(
    "driftloop_features_events_total",
    "Records of events.valid handled by the feature store, by outcome.",
    ["outcome"],
)

Send = Callable[[str, bytes, bytes, list[tuple[str, bytes]]], Awaitable[Any]]


class StateStore(Protocol):
    """The per-entity table (a Faust table in production, a dict in tests)."""

    def get(self, key: str) -> Any: ...

    def items(self) -> Any: ...

    def __setitem__(self, key: str, value: Any) -> None: ...


def set_feature_value(target: common_pb2.FeatureValue, value: Value) -> None:
    """Fill a FeatureValue in place (cheaper than building one and copying it)."""
    if isinstance(value, bool):
        target.int_value = int(value)
    elif isinstance(value, int):
        target.int_value = value
    elif isinstance(value, float):
        target.float_value = value
    else:
        target.string_value = str(value)


def feature_value(value: Value) -> common_pb2.FeatureValue:
    result = common_pb2.FeatureValue()
    set_feature_value(result, value)
    return result


def plain_value(value: common_pb2.FeatureValue) -> Value | None:
    kind = value.WhichOneof("kind")
    if kind is None:
        return None
    result: Value = getattr(value, kind)
    return result


class StreamHandler:
    """Applies `events.valid` records to the entity table and the offline log."""

    def __init__(
        self,
        math: FeatureMath,
        table: StateStore,
        send: Send,
        *,
        service: str,
        cache: MutableMapping[str, EntityState] | None = None,
        offline_topic: str = Topics.FEATURES_OFFLINE,
        deadletter_topic: str = Topics.DEADLETTER,
    ) -> None:
        self._math = math
        self._table = table
        self._send = send
        self._service = service
        self._source = f"/driftloop/{service}"
        self.cache: MutableMapping[str, EntityState] = cache if cache is not None else {}
        self._offline_topic = offline_topic
        self._deadletter_topic = deadletter_topic

    def state(self, entity_id: str) -> EntityState:
        cached = self.cache.get(entity_id)
        if cached is None:
            cached = EntityState.from_json(self._table.get(entity_id))
            self.cache[entity_id] = cached
        return cached

    def load_all(self) -> int:
        """Decode every entity of the table into the in-memory cache, except those
        the stream already holds: an event being applied (suspended while its row
        is sent) updates the cached state, which a fresh copy of the table row
        would silently replace."""
        for entity_id, data in self._table.items():
            if entity_id not in self.cache:
                self.cache[entity_id] = EntityState.from_json(data)
        return len(self.cache)

    async def handle(self, record: Record) -> None:
        with tracer.start_as_current_span(
            f"process {record.topic}",
            context=record.headers.trace_context(),
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.type": "process",
                "messaging.destination.name": record.topic,
                "messaging.destination.partition.id": str(record.partition),
                "messaging.kafka.offset": record.offset,
                "messaging.message.id": record.headers.id,
            },
        ):
            try:
                outcome = await self._dispatch(record)
            except PoisonMessage as poison:
                await self._deadletter(record, poison)
                outcome = "deadlettered"
            EVENTS.labels(outcome).inc()

    async def _dispatch(self, record: Record) -> str:
        if record.headers.type == OBSERVED:
            return await self._observation(record, _decode(events_pb2.Observation, record))
        if record.headers.type == LABELLED:
            label = _decode(events_pb2.Label, record)
            await self._emit(label.entity_id, label, record.headers.id)
            return "label"
        raise PoisonMessage(
            f"ce_type: unknown event type {record.headers.type!r} on {record.topic}",
            field="ce_type",
            rule="type",
        )

    async def _observation(self, record: Record, observation: events_pb2.Observation) -> str:
        entity = observation.entity_id
        event_time_ms = observation.event_time.ToMilliseconds()
        values = {k: v for k, v in _plain(observation.values).items() if v is not None}
        state = self.state(entity)
        if state.contains(observation.event_id):
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
        with tracer.start_as_current_span("features.point_in_time_row"):
            row_values = self._math.point_in_time_row(state, event_time_ms, values)
        row = features_pb2.TrainingRow(
            event_id=observation.event_id,
            entity_id=entity,
            event_time=observation.event_time,
            features={k: feature_value(v) for k, v in row_values.items()},
            label=observation.label if observation.HasField("label") else 0,
        )
        has_label = "1" if observation.HasField("label") else "0"
        await self._emit(entity, row, observation.event_id, {"has_label": has_label})
        with tracer.start_as_current_span("features.aggregate"):
            outcome = self._math.apply(state, observation.event_id, event_time_ms, values)
        if outcome is Outcome.APPLIED:
            self._table[entity] = state.to_json()
        return outcome.value

    async def _emit(
        self,
        key: str,
        message: Any,
        event_id: str,
        extra: Mapping[str, str] | None = None,
    ) -> None:
        kind = kind_of_message(message.DESCRIPTOR.full_name)
        ce_type = LABELLED if isinstance(message, events_pb2.Label) else kind.ce_type
        headers = make_headers(ce_type, self._source, event_id=event_id, extra=extra)
        await self._send(
            self._offline_topic, key.encode(), message.SerializeToString(), headers.to_kafka()
        )

    async def _deadletter(self, record: Record, poison: PoisonMessage) -> None:
        log.warning(
            "record_deadlettered",
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            reason=poison.reason,
        )
        letter = build_deadletter(record, poison, self._service, poison.event_id)
        headers = make_headers(
            kind_of_message(letter.DESCRIPTOR.full_name).ce_type,
            self._source,
            extra={"dl_reason": poison.reason[:200]},
        )
        await self._send(
            self._deadletter_topic,
            record.key or b"",
            letter.SerializeToString(),
            headers.to_kafka(),
        )


def _decode(message_type: Any, record: Record) -> Any:
    try:
        return message_type.FromString(record.value)
    except DecodeError as error:
        raise PoisonMessage(
            f"value: not a {message_type.DESCRIPTOR.full_name}: {error}", rule="decode"
        ) from None


def _plain(values: Mapping[str, common_pb2.FeatureValue]) -> dict[str, Value | None]:
    return {name: plain_value(value) for name, value in values.items()}
