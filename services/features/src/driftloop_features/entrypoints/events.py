"""The Faust agent over `events.valid`: decode -> handle -> publish -> count, then ack.

The agent owns acknowledgement, because Faust's own is wrong for us: a stream
acks an event in a `finally` once the agent moves past it, also when the agent
raised, and Faust then commits past an event that was never applied (the actor
is restarted and carries on with the next one). So the agent iterates with
acks off and acks an event only once it is done:

* poison (a record that cannot decode, an observation too late to count) is
  dead-lettered, and the event acked;
* a transient error (`retry.is_transient`: disk, network, broker) is retried
  with backoff inside the agent until it clears, and the event is acked once;
* any other error is a crash: the event stays unacked, the agent takes no
  further event, and `failed` is set so the service exits non-zero. Faust
  commits no offset past an unacked one, so the restarted worker reads it again.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from driftloop_core.kafka import Outgoing, PoisonMessage, Record, Topics
from driftloop_core.kafka.retry import Stopped, until_done
from driftloop_core.kafka.spans import record_span
from driftloop_core.settings import KafkaSettings
from opentelemetry.trace import Status, StatusCode

from driftloop_features.adapters.faust_app import FeaturesApp, record_of
from driftloop_features.metrics import EVENTS
from driftloop_features.stream import StreamHandler

log = structlog.get_logger(__name__)

Send = Callable[[Outgoing], Awaitable[None]]
DeadLetter = Callable[[Record, PoisonMessage], Awaitable[None]]


class EventsAgent:
    """Applies one record at a time: the handler decides, this publishes what it
    said, then counts the observation (so its row is out before the state moves)."""

    def __init__(
        self, handler: StreamHandler, send: Send, deadletter: DeadLetter, *, group: str
    ) -> None:
        self.handler = handler
        self._send = send
        self._deadletter = deadletter
        self._group = group

    async def process(self, record: Record) -> None:
        with record_span(record, self._group) as span:
            handled = self.handler.handle(record)
            if handled.poison is not None:
                span.set_status(Status(StatusCode.ERROR, handled.poison.reason))
                log.warning(
                    "record_deadlettered",
                    topic=record.topic,
                    partition=record.partition,
                    offset=record.offset,
                    reason=handled.poison.reason,
                )
                await self._deadletter(record, handled.poison)
                EVENTS.labels("deadlettered").inc()
                return
            for outgoing in handled.publish:
                await self._send(outgoing)
            outcome = "label" if handled.observed is None else self.handler.count(handled.observed)
            EVENTS.labels(outcome).inc()


class StreamAgent:
    """`EventsAgent` run by a Faust agent with manual acks; `failed` ends when an
    event can be neither applied nor retried."""

    def __init__(self, agent: EventsAgent, kafka: KafkaSettings) -> None:
        self._agent = agent
        self._kafka = kafka
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
        """Stop retrying: an event still failing stays unacked (read again later)."""
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
            # An actor restarted after a crash takes nothing: its event is unacked.
            await asyncio.Future()
        async for event in stream.noack().events():
            record = record_of(event.message)
            try:
                await until_done(
                    self._kafka,
                    f"handle {record.topic}",
                    functools.partial(self._agent.process, record),
                    self._stopping,
                )
            except Stopped:
                self._leave_unacked()
                return  # stopping: the event is read again after the restart
            except Exception as error:
                log.exception(
                    "event_failed",
                    topic=record.topic,
                    partition=record.partition,
                    offset=record.offset,
                    meaning="left unacked; the service exits and the event is read again",
                )
                self._leave_unacked()
                failure.set_result(error)
                await asyncio.Future()  # take nothing more until the service stops
            await stream.ack(event)

    def _leave_unacked(self) -> None:
        # Faust waits for every event in flight to be acked before it stops or
        # gives partitions up; one left unacked on purpose would hold it forever.
        # Only committed offsets count, so the event is still read again.
        if self._features is not None:
            self._features.app.conf.stream_wait_empty = False
