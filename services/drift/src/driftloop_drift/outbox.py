"""The drift events decided but not yet acknowledged, and the trace each is published in.

An event goes out only after it was stored in the outbox with the state that
decided it (`DriftStateStore.save`); `Outbox.publish` sends it under the event
id chosen then and removes it from the outbox once the broker acknowledged it.
After a crash the same events go out again, under the same ids.

A detection starts the retrain loop's trace: a `drift.detected` root span. The
training request it causes is published inside it (in the same batch) or in a
`drift.retrain_requested` child of it (once its post-drift rows are there, a
later batch), so the whole loop reads as one trace. A rollout's verdict is a
`drift.rollout_judged` span in the trace its `ModelRolloutStarted` came in
(the registry starts a trial while registering the retrained version, inside
the retrain loop's trace), so the loop's trace goes on through the rollout to
the promotion and the swap; a verdict with no start seen by this process (a
restart in between) is a root span of its own.

A `RolloutJudged` goes out under an id derived from its rollout id: whatever
decides it again (a replay, a restart before the outbox was emptied) publishes
the same id, and the outbox keeps one event per id.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Sequence

from driftloop.v1 import events_pb2
from driftloop_core.kafka.topics import kind_of_message
from google.protobuf.message import Message
from opentelemetry import trace
from opentelemetry.context import Context

from driftloop_drift.adapters.state import DriftStateStore, OutboxEvent
from driftloop_drift.domain.policy import derived_id
from driftloop_drift.ports import EventPublisher

_tracer = trace.get_tracer("driftloop.drift")
# Span contexts of recent detections, for the request one of them causes later.
# Kept in memory: after a restart in between, the request starts its own trace.
DETECTIONS_REMEMBERED = 256
_DETECTED = events_pb2.DriftDetected.DESCRIPTOR.full_name
_REQUESTED = events_pb2.TrainingRequested.DESCRIPTOR.full_name
_JUDGED = events_pb2.RolloutJudged.DESCRIPTOR.full_name


def judged_event_id(model: str, rollout_id: str) -> str:
    """The event id of a rollout's verdict: one per rollout, in every process."""
    return derived_id(model, "rollout-judged", rollout_id)


def outbox_event(message: Message) -> OutboxEvent:
    """A decided event as the outbox keeps it: its id, type, key and payload."""
    if isinstance(message, events_pb2.DriftDetected):
        event_id, key = message.drift_id, message.model
    elif isinstance(message, events_pb2.TrainingRequested):
        event_id, key = message.request_id, message.model
    elif isinstance(message, events_pb2.RolloutJudged):
        event_id, key = judged_event_id(message.model, message.rollout_id), message.model
    else:
        raise TypeError(f"the drift engine does not publish {type(message).__name__}")
    return OutboxEvent(event_id, message.DESCRIPTOR.full_name, key, message.SerializeToString())


class Outbox:
    """Publishes stored events in their loop spans, then marks them published."""

    def __init__(self, store: DriftStateStore, publisher: EventPublisher) -> None:
        self._store = store
        self._publisher = publisher
        self._detections: OrderedDict[str, trace.SpanContext] = OrderedDict()
        self._rollouts: OrderedDict[str, trace.SpanContext] = OrderedDict()

    def remember_rollout(self, rollout_id: str, context: Context) -> None:
        """The trace a rollout's start came in, for its verdict to continue."""
        span = trace.get_current_span(context).get_span_context()
        if not span.is_valid:
            return
        self._rollouts[rollout_id] = span
        while len(self._rollouts) > DETECTIONS_REMEMBERED:
            self._rollouts.popitem(last=False)

    async def publish(self, events: Sequence[OutboxEvent]) -> None:
        if not events:
            return
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
        if event.message == _DETECTED:
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
        if event.message == _JUDGED:
            judged = events_pb2.RolloutJudged.FromString(event.payload)
            started = self._rollouts.get(judged.rollout_id)
            span = _tracer.start_span(
                "drift.rollout_judged",
                context=(
                    trace.set_span_in_context(trace.NonRecordingSpan(started))
                    if started is not None
                    else Context()
                ),
                attributes={
                    "driftloop.model": judged.model,
                    "driftloop.rollout_id": judged.rollout_id,
                    "driftloop.rollout.candidate_version": judged.candidate_version,
                    "driftloop.rollout.verdict": events_pb2.RolloutVerdict.Name(judged.verdict),
                },
            )
            loops[f"judged:{judged.rollout_id}"] = span
            return span
        if event.message == _REQUESTED:
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
