"""The Faust agent over `events.valid`: decode -> handle -> publish -> count, then ack.

The agent takes events in batches (up to a poll's worth, or what arrived
within `BATCH_WITHIN_S`): it applies every record in offset order, each seeing
the state the previous one left, publishes their rows as it goes, then writes
each entity the batch changed to the table once (one serialisation, one
changelog record) and acks the batch. A row is always published before the
state that counts its observation is written, and an event is acked only
after that write.

The agent owns acknowledgement, because Faust's own is wrong for us: a stream
acks an event in a `finally` once the agent moves past it, also when the agent
raised, and Faust then commits past an event that was never applied (the actor
is restarted and carries on with the next one). So the agent takes batches
with acks off and acks a batch's events only once it is done:

* poison (a record that cannot decode, an observation too late to count) is
  dead-lettered, and the event acked with its batch;
* a transient error (`retry.is_transient`: disk, network, broker) is retried
  with backoff inside the agent until it clears: the retry resumes the batch
  where it stopped (the records before the failing one are not applied again),
  and the events are acked once;
* any other error is a crash: no event of the batch is acked (the failing one,
  every later one, and the earlier ones, whose states are not written), the
  agent takes no further batch, and `failed` is set so the service exits
  non-zero. Faust commits no offset past an unacked one, so the restarted
  worker reads them again; rows already published are published again, and the
  state counts each event once.
"""

from __future__ import annotations

import asyncio
import functools
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import structlog
from driftloop_core.feature_math import Outcome
from driftloop_core.kafka import Outgoing, PoisonMessage, Record, Topics
from driftloop_core.kafka.retry import Stopped, until_done
from driftloop_core.kafka.spans import batch_span
from driftloop_core.settings import KafkaSettings
from opentelemetry import trace
from opentelemetry.trace import Span
from prometheus_client import Counter as Metric

from driftloop_features.adapters.faust_app import FeaturesApp, processing, record_of
from driftloop_features.metrics import EVENTS
from driftloop_features.stream import StreamHandler

log = structlog.get_logger(__name__)
tracer = trace.get_tracer("driftloop.features")

Send = Callable[[Outgoing], Awaitable[None]]
DeadLetters = Callable[[Sequence[tuple[Record, PoisonMessage]]], Awaitable[None]]
# How long a batch waits to fill: the latency an event can gain at low rates.
BATCH_WITHIN_S = 0.02


def _anywhere(index: int) -> AbstractContextManager[Any]:
    return nullcontext()


@dataclass
class Batch:
    """Records of `events.valid` applied together, and how far that has got:
    `EventsAgent.process` resumes from here after a failed attempt.

    `writing(i)` is the context in which a state changed by `records[i]` is
    written to the table (Faust's table needs the event being processed)."""

    records: Sequence[Record]
    writing: Callable[[int], AbstractContextManager[Any]] = _anywhere
    # Records done: their rows published, their observations counted in memory.
    applied: int = 0
    # Entity -> index of the latest record that changed its state, until saved.
    unsaved: dict[str, int] = field(default_factory=dict)
    poisoned: list[tuple[Record, PoisonMessage]] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)

    @property
    def current(self) -> Record:
        """The record being applied (the last one once all are)."""
        return self.records[min(self.applied, len(self.records) - 1)]


class EventsAgent:
    """Applies batches of records: the handler decides, this publishes what it said
    and counts each observation (so its row is out before the state moves), then
    dead-letters the poison and writes each changed entity's state once."""

    def __init__(
        self, handler: StreamHandler, send: Send, deadletter: DeadLetters, *, group: str
    ) -> None:
        self.handler = handler
        self._send = send
        self._deadletter = deadletter
        self._group = group
        self._metrics: dict[str, Metric] = {}

    async def process(self, batch: Batch) -> None:
        """Finish `batch`; after it raised, calling it again carries on from the
        record that failed (states are written only once every record is done).

        Each attempt is one `process <topic>` span, linked to the producers'
        spans of its records; the rows it publishes carry its context."""
        with batch_span(_traces_first(batch.records), self._group) as span:
            records = batch.records
            while batch.applied < len(records):
                changed = await self._apply(records[batch.applied], batch, span)
                if changed is not None:
                    batch.unsaved[changed] = batch.applied
                batch.applied += 1
            if batch.poisoned:
                await self._deadletter(batch.poisoned)
                batch.poisoned = []
            if batch.unsaved:
                with tracer.start_as_current_span(
                    "features.save", attributes={"driftloop.entities": len(batch.unsaved)}
                ):
                    self._save(batch)
        for outcome, count in batch.outcomes.items():
            self._metric(outcome).inc(count)
        batch.outcomes.clear()

    async def _apply(self, record: Record, batch: Batch, span: Span) -> str | None:
        """Publish one record's rows and count its observation; returns the entity
        whose state it changed, if any."""
        handled = self.handler.handle(record)
        if handled.poison is not None:
            reason = handled.poison.reason
            span.add_event(
                "deadlettered",
                {"messaging.destination.partition.id": str(record.partition),
                 "messaging.kafka.offset": record.offset, "reason": reason},
            )  # fmt: skip
            log.warning(
                "record_deadlettered",
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                reason=reason,
            )
            batch.poisoned.append((record, handled.poison))
            batch.outcomes["deadlettered"] += 1
            return None
        for outgoing in handled.publish:
            await self._send(outgoing)
        if handled.observed is None:
            batch.outcomes["label"] += 1
            return None
        outcome = self.handler.count(handled.observed)
        batch.outcomes[outcome.value] += 1
        return handled.observed.entity_id if outcome is Outcome.APPLIED else None

    def _save(self, batch: Batch) -> None:
        """Write each entity the batch changed to the table, once."""
        while batch.unsaved:
            entity_id, index = next(iter(batch.unsaved.items()))
            with batch.writing(index):
                self.handler.save(entity_id)
            del batch.unsaved[entity_id]

    def _metric(self, outcome: str) -> Metric:
        metric = self._metrics.get(outcome)
        if metric is None:
            metric = self._metrics[outcome] = EVENTS.labels(outcome)
        return metric


def _traces_first(records: Sequence[Record]) -> list[Record]:
    """The records with the first of each producer's trace context in front: a
    batch span links to the first few contexts it finds, and most records of a
    batch share a handful (ingestion sends each of its batches in one trace)."""
    seen: set[str] = set()
    first: list[Record] = []
    rest: list[Record] = []
    for record in records:
        context = record.headers.traceparent
        if context and context not in seen:
            seen.add(context)
            first.append(record)
        else:
            rest.append(record)
    return first + rest


def _processing(events: Sequence[Any], index: int) -> AbstractContextManager[Any]:
    return processing(events[index])


class StreamAgent:
    """`EventsAgent` run by a Faust agent with manual acks; `failed` ends when a
    batch can be neither applied nor retried."""

    def __init__(
        self,
        agent: EventsAgent,
        kafka: KafkaSettings,
        *,
        batch_size: int | None = None,
        batch_within_s: float = BATCH_WITHIN_S,
    ) -> None:
        """`batch_size`: the most events in a batch (a poll's worth by default)."""
        self._agent = agent
        self._kafka = kafka
        self._batch_size = batch_size or kafka.max_poll_records
        self._batch_within_s = batch_within_s
        self._stopping = asyncio.Event()
        self._features: FeaturesApp | None = None
        self.failed: asyncio.Future[BaseException] | None = None

    def attach(self, features: FeaturesApp, *, topic: str = Topics.VALID) -> None:
        self._features = features
        source = features.app.topic(
            topic,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            partitions=self._kafka.partitions,
        )
        features.app.agent(source, name="driftloop_features.process")(self._consume)

    def request_stop(self) -> None:
        """Stop retrying: a batch still failing stays unacked (read again later)."""
        self._stopping.set()

    async def wait_failed(self) -> BaseException:
        """Return the error that stopped the agent (waits until there is one)."""
        return await self._failure()

    def _failure(self) -> asyncio.Future[BaseException]:
        if self.failed is None:
            self.failed = asyncio.get_running_loop().create_future()
        return self.failed

    async def _consume(self, stream: Any) -> None:
        failure = self._failure()
        if failure.done():
            # An actor restarted after a crash takes nothing: its events are unacked.
            await asyncio.Future()
        async for events in stream.noack_take(self._batch_size, within=self._batch_within_s):
            batch = Batch(
                [record_of(event.message) for event in events],
                writing=functools.partial(_processing, events),
            )
            try:
                await until_done(
                    self._kafka,
                    f"handle {batch.records[0].topic}",
                    functools.partial(self._agent.process, batch),
                    self._stopping,
                )
            except Stopped:
                self._leave_unacked()
                return  # stopping: the batch is read again after the restart
            except Exception as error:
                failed = batch.current
                log.exception(
                    "event_failed",
                    topic=failed.topic,
                    partition=failed.partition,
                    offset=failed.offset,
                    batch=len(batch.records),
                    meaning="its batch is left unacked; the service exits and reads it again",
                )
                self._leave_unacked()
                failure.set_result(error)
                await asyncio.Future()  # take nothing more until the service stops
            for event in events:
                await stream.ack(event)

    def _leave_unacked(self) -> None:
        # Faust waits for every event in flight to be acked before it stops or
        # gives partitions up; one left unacked on purpose would hold it forever.
        # Only committed offsets count, so the event is still read again.
        if self._features is not None:
            self._features.app.conf.stream_wait_empty = False
