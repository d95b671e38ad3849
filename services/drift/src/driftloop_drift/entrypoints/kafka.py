"""Records in, engine calls, events out: the drift service's Kafka side.

One consumer reads every partition of `predictions`, `events.valid`,
`models.promoted`, `models.registered` and `training.failed` by manual
assignment, not a consumer group: performance drift needs one model's whole
error stream in one place, so the service is a single instance, and without a
group there is no join delay or rebalance. Its position is the offsets stored
with its state (`StateStore`), not committed group offsets.

After each batch the state and the next offsets are saved together, at most
every `snapshot_interval_s`, and always before an event goes out: an event is
first written to the outbox in the same transaction as the state that decided
it, then published, then removed from the outbox. A record that does not
decode goes to the dead-letter topic with its source position, and the
partition moves on.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition
from driftloop.v1 import common_pb2, events_pb2
from driftloop_core.kafka import PoisonMessage, Publisher, Record, parse_headers
from driftloop_core.kafka.deadletter import DeadLetterWriter
from driftloop_core.kafka.topics import kind_of_message, kind_of_type
from driftloop_core.logging import get_logger
from google.protobuf.message import DecodeError, Message
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind

from driftloop_drift import metrics
from driftloop_drift.adapters.registry import (
    ChampionReference,
    RegistryReferences,
    RegistryUnavailable,
)
from driftloop_drift.adapters.state import OutboxEvent, Position, StateStore
from driftloop_drift.config import DriftSettings
from driftloop_drift.domain.join import LabelSeen, PredictionSeen
from driftloop_drift.handlers import DriftEngine

log = get_logger(__name__)
_tracer = trace.get_tracer("driftloop.drift")
# Span contexts of recent detections, for the request one of them causes later.
# Kept in memory: after a restart in between, the request starts its own trace.
DETECTIONS_REMEMBERED = 256
# A batch's consume span links to the traces of its first records, not all of them.
MAX_LINKS = 32


def _links(messages: list[Any]) -> list[trace.Link]:
    """Links from a batch's process span to the traces its records carry."""
    links = []
    for message in messages[:MAX_LINKS]:
        carrier = {
            key: value.decode("utf-8", "replace")
            for key, value in message.headers or ()
            if key in ("traceparent", "tracestate") and value is not None
        }
        if carrier:
            context = trace.get_current_span(propagate.extract(carrier)).get_span_context()
            if context.is_valid:
                links.append(trace.Link(context))
    return links


OBSERVED = "driftloop.v1.Observation"
LABELLED = "driftloop.v1.Label"
# How often a missing champion reference is asked for again.
REFERENCE_RETRY_S = 30.0

Lookup = Callable[[str, int | None], Awaitable[ChampionReference | None]]


def feature_value(value: common_pb2.FeatureValue) -> float | str | None:
    kind = value.WhichOneof("kind")
    if kind == "float_value":
        return value.float_value
    if kind == "int_value":
        return float(value.int_value)
    if kind == "string_value":
        return value.string_value
    return None


def _ms(stamp: Any, fallback: int) -> int:
    return int(stamp.ToMilliseconds()) if stamp.seconds or stamp.nanos else fallback


def prediction_seen(prediction: events_pb2.Prediction, record_ms: int) -> PredictionSeen:
    """The prediction as the engine sees it: features that took a default are left out."""
    defaults = set(prediction.defaults_applied)
    features: dict[str, float | str] = {}
    for name, value in prediction.features.items():
        converted = feature_value(value)
        if converted is not None and name not in defaults:
            features[name] = converted
    event_ms = _ms(prediction.event_time, _ms(prediction.predicted_at, record_ms))
    return PredictionSeen(
        prediction.event_id,
        prediction.model,
        prediction.model_version,
        prediction.label,
        event_ms,
        features,
    )


class DriftConsumer:
    def __init__(
        self,
        engine_factory: Callable[[dict[str, Any] | None], DriftEngine],
        config: DriftSettings,
        consumer: AIOKafkaConsumer,
        publisher: Publisher,
        store: StateStore,
        references: RegistryReferences,
        service_name: str,
    ) -> None:
        self._engine_factory = engine_factory
        self._config = config
        self._consumer = consumer
        self._publisher = publisher
        self._store = store
        self._references = references
        self._deadletters = DeadLetterWriter(publisher, config.deadletter_topic, service_name)
        self._stopping = asyncio.Event()
        self._positions: dict[Position, int] = {}
        self._dirty = False
        self._saved_at = 0.0
        self._reference_tried_at = 0.0
        self._detections: OrderedDict[str, trace.SpanContext] = OrderedDict()
        self.engine: DriftEngine | None = None

    async def start(self) -> None:
        saved = await asyncio.to_thread(self._store.load)
        self.engine = self._engine_factory(saved.state)
        self._positions = dict(saved.positions)
        await self._publish(saved.outbox)
        await self._consumer.start()
        await self._consumer.topics()
        partitions = [
            TopicPartition(topic, partition)
            for topic in self._config.source_topics
            for partition in sorted(self._consumer.partitions_for_topic(topic) or ())
        ]
        self._consumer.assign(partitions)
        fresh = []
        for tp in partitions:
            stored = self._positions.get((tp.topic, tp.partition))
            if stored is None:
                fresh.append(tp)
            else:
                self._consumer.seek(tp, stored)
        if fresh:
            await self._consumer.seek_to_beginning(*fresh)
        if self.engine.champion is None or self.engine.needs_reference:
            await self._fetch_reference(
                None if self.engine.champion is None else self.engine.champion
            )
        log.info(
            "drift_started",
            model=self.engine.model,
            champion=self.engine.champion,
            resumed=saved.state is not None,
            labelled=self.engine.labels.total,
            state=str(self._store.path),
        )

    def request_stop(self) -> None:
        self._stopping.set()

    async def stop(self) -> None:
        self.request_stop()
        await self._consumer.stop()
        if self.engine is not None and self._dirty:
            await self._save([])

    async def run(self) -> None:
        assert self.engine is not None, "DriftConsumer.start() was not awaited"
        while not self._stopping.is_set():
            batches = await self._consumer.getmany(timeout_ms=200, max_records=1000)
            out: list[Message] = []
            for tp, messages in batches.items():
                with _tracer.start_as_current_span(
                    f"process {tp.topic}",
                    kind=SpanKind.CONSUMER,
                    links=_links(messages),
                    attributes={
                        "messaging.system": "kafka",
                        "messaging.destination.name": tp.topic,
                        "messaging.destination.partition.id": str(tp.partition),
                        "messaging.operation.type": "process",
                        "messaging.batch.message_count": len(messages),
                    },
                ):
                    for message in messages:
                        out.extend(await self._handle(message))
                        self._positions[(tp.topic, tp.partition)] = message.offset + 1
                        self._dirty = True
            if batches:
                self.engine.expire(self.engine.clock_ms)
            if out:
                events = [self._outbox_event(message) for message in out]
                await self._save(events)
                await self._publish(events)
            elif (
                self._dirty
                and time.monotonic() - self._saved_at >= self._config.snapshot_interval_s
            ):
                await self._save([])
            if self.engine.needs_reference and (
                time.monotonic() - self._reference_tried_at >= REFERENCE_RETRY_S
            ):
                await self._fetch_reference(self.engine.champion)
            for (detector, feature), value in self.engine.statistics().items():
                metrics.STATISTIC.labels(self.engine.model, feature, detector).set(value)

    # ------------------------------------------------------------------ records

    async def _handle(self, message: Any) -> list[Message]:
        assert self.engine is not None
        record_ms = int(message.timestamp) if message.timestamp and message.timestamp > 0 else 0
        record_ms = record_ms or int(time.time() * 1000)
        try:
            return await self._dispatch(message, record_ms)
        except PoisonMessage as poison:
            record = Record(
                topic=message.topic,
                partition=message.partition,
                offset=message.offset,
                key=message.key,
                value=message.value or b"",
                headers=parse_headers(message.headers),
                raw_headers=tuple(message.headers or ()),
                timestamp_ms=message.timestamp,
            )
            log.warning(
                "drift_record_deadlettered",
                topic=message.topic,
                partition=message.partition,
                offset=message.offset,
                reason=poison.reason,
            )
            await self._deadletters.write(record, poison)
            return []

    async def _dispatch(self, message: Any, record_ms: int) -> list[Message]:
        engine = self.engine
        assert engine is not None
        topic = message.topic
        value = message.value or b""
        if topic == self._config.predictions_topic:
            prediction = _decode(events_pb2.Prediction, value)
            if not prediction.event_id:
                raise PoisonMessage(
                    "Prediction.event_id: must not be empty", field="event_id", rule="required"
                )
            return self._count(
                engine.on_prediction(prediction_seen(prediction, record_ms), record_ms)
            )
        if topic == self._config.labels_topic:
            kind = kind_of_type(parse_headers(message.headers).type)
            if kind is None or kind.message not in (OBSERVED, LABELLED):
                return []
            label = self._label(kind.message, value, record_ms)
            return [] if label is None else self._count(engine.on_label(label, record_ms))
        if topic == self._config.promoted_topic:
            promoted = _decode(events_pb2.ModelPromoted, value)
            if promoted.model == engine.model and promoted.to_version != engine.champion:
                reference = await self._reference_for(promoted.to_version)
                engine.on_promoted(promoted.to_version, reference, record_ms)
                log.info(
                    "drift_detectors_reset",
                    model=promoted.model,
                    version=promoted.to_version,
                    reference=sorted(reference or ()),
                )
            return []
        if topic == self._config.registered_topic:
            registered = _decode(events_pb2.ModelRegistered, value)
            if engine.on_outcome(registered.model, registered.request_id, record_ms):
                log.info(
                    "training_request_answered",
                    request_id=registered.request_id,
                    outcome="registered",
                    version=registered.version,
                )
            return []
        if topic == self._config.failed_topic:
            failed = _decode(events_pb2.TrainingFailed, value)
            if engine.on_outcome(failed.model, failed.request_id, record_ms):
                log.info(
                    "training_request_answered",
                    request_id=failed.request_id,
                    outcome="failed",
                    stage=failed.stage,
                )
            return []
        return []

    def _label(self, message: str, value: bytes, record_ms: int) -> LabelSeen | None:
        assert self.engine is not None
        if message == OBSERVED:
            observation = _decode(events_pb2.Observation, value)
            if not observation.HasField("label"):
                return None
            return LabelSeen(
                observation.event_id,
                observation.feature_set or self.engine.model,
                observation.label,
                _ms(observation.event_time, record_ms),
            )
        label = _decode(events_pb2.Label, value)
        return LabelSeen(
            label.event_id,
            label.feature_set or self.engine.model,
            label.label,
            _ms(label.event_time, record_ms),
        )

    def _count(self, out: list[Message]) -> list[Message]:
        assert self.engine is not None
        model = self.engine.model
        for message in out:
            if isinstance(message, events_pb2.DriftDetected):
                kind = events_pb2.DriftKind.Name(message.kind).removeprefix("DRIFT_KIND_").lower()
                metrics.DETECTIONS.labels(model, kind, message.detector).inc()
                log.warning(
                    "drift_detected",
                    model=model,
                    version=message.model_version,
                    detector=message.detector,
                    feature=message.feature,
                    statistic=message.statistic,
                    threshold=message.threshold,
                    window=message.window_size,
                    drift_id=message.drift_id,
                )
            elif isinstance(message, events_pb2.TrainingRequested):
                trigger = events_pb2.TrainingTrigger.Name(message.trigger)
                metrics.TRAINING_REQUESTS.labels(
                    model, trigger.removeprefix("TRAINING_TRIGGER_").lower()
                ).inc()
                log.info(
                    "training_requested",
                    model=model,
                    request_id=message.request_id,
                    trigger=trigger,
                    reason=message.reason,
                )
        for drift_id, why in self.engine.suppressed:
            metrics.SUPPRESSED.labels(model).inc()
            log.info("training_request_suppressed", model=model, drift_id=drift_id, why=why)
        self.engine.suppressed = []
        return out

    # ------------------------------------------------------------------ registry

    async def _reference_for(
        self, version: int
    ) -> dict[str, common_pb2.ReferenceDistribution] | None:
        assert self.engine is not None
        self._reference_tried_at = time.monotonic()
        try:
            found = await self._references.lookup(self.engine.model, version)
        except RegistryUnavailable as error:
            log.warning("champion_reference_unavailable", version=version, error=str(error))
            return None
        return None if found is None else found.reference

    async def _fetch_reference(self, version: int | None) -> None:
        assert self.engine is not None
        self._reference_tried_at = time.monotonic()
        try:
            found = await self._references.lookup(self.engine.model, version)
        except RegistryUnavailable as error:
            log.warning("champion_reference_unavailable", version=version, error=str(error))
            return
        if found is not None:
            self.engine.on_promoted(found.version, found.reference, self.engine.clock_ms)
            self._dirty = True

    # ------------------------------------------------------------------ state and outbox

    @staticmethod
    def _outbox_event(message: Message) -> OutboxEvent:
        if isinstance(message, events_pb2.DriftDetected):
            event_id, key = message.drift_id, message.model
        elif isinstance(message, events_pb2.TrainingRequested):
            event_id, key = message.request_id, message.model
        else:
            raise TypeError(f"the drift engine does not publish {type(message).__name__}")
        return OutboxEvent(event_id, message.DESCRIPTOR.full_name, key, message.SerializeToString())

    async def _save(self, events: list[OutboxEvent]) -> None:
        assert self.engine is not None
        state = self.engine.to_json()
        await asyncio.to_thread(self._store.save, state, dict(self._positions), events)
        self._saved_at = time.monotonic()
        self._dirty = False

    async def _publish(self, events: list[OutboxEvent]) -> None:
        if not events:
            return
        # A detection starts the retrain loop's trace; the request it causes is
        # published inside it (in the same batch or, once its post-drift rows are
        # there, a later one), so the whole loop reads as one trace.
        loops: dict[str, trace.Span] = {}
        try:
            for event in events:
                kind = kind_of_message(event.message)
                with trace.use_span(self._loop_span(event, loops), end_on_exit=False):
                    await self._publisher.publish(
                        kind.topic,
                        event.payload,
                        key=event.key,
                        ce_type=kind.ce_type,
                        event_id=event.event_id,
                    )
        finally:
            for span in loops.values():
                span.end()
        await asyncio.to_thread(self._store.published, [event.event_id for event in events])

    def _loop_span(self, event: OutboxEvent, loops: dict[str, trace.Span]) -> trace.Span:
        """The span a drift event is published in: a new `drift.detected` root for a
        detection; for the request it causes, that detection's span, or a
        `drift.retrain_requested` child of it when the request comes later."""
        if event.message == events_pb2.DriftDetected.DESCRIPTOR.full_name:
            detected = events_pb2.DriftDetected.FromString(event.payload)
            span = _tracer.start_span(
                "drift.detected",
                context=Context(),
                attributes={
                    "driftloop.model": detected.model,
                    "driftloop.model_version": detected.model_version,
                    "driftloop.drift.detector": detected.detector,
                    "driftloop.drift.feature": detected.feature,
                    "driftloop.drift.statistic": detected.statistic,
                },
            )
            loops[detected.drift_id] = span
            self._detections[detected.drift_id] = span.get_span_context()
            while len(self._detections) > DETECTIONS_REMEMBERED:
                self._detections.popitem(last=False)
            return span
        if event.message == events_pb2.TrainingRequested.DESCRIPTOR.full_name:
            requested = events_pb2.TrainingRequested.FromString(event.payload)
            drift_id = requested.parent_drift_id
            if drift_id in loops:
                return loops[drift_id]
            detection = self._detections.get(drift_id)
            if detection is not None:
                span = _tracer.start_span(
                    "drift.retrain_requested",
                    context=trace.set_span_in_context(trace.NonRecordingSpan(detection)),
                    attributes={
                        "driftloop.model": requested.model,
                        "driftloop.request_id": requested.request_id,
                    },
                )
                loops[f"request:{requested.request_id}"] = span
                return span
        return trace.INVALID_SPAN


M = TypeVar("M", bound=Message)


def _decode(cls: type[M], value: bytes) -> M:
    try:
        return cls.FromString(value)
    except DecodeError as error:
        raise PoisonMessage(
            f"value is not a {cls.DESCRIPTOR.full_name}: {error}", rule="decode"
        ) from None
