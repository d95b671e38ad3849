"""`models.promoted` in: every replica loads every promotion (and rollback) of its model.

A group consumer whose group id is unique to this process, starting from the
latest offsets: what happened before the process started is covered by the
registry's GetChampion at start, which runs only once this consumer holds its
partitions and knows its positions, so no promotion falls in between. A record
that does not decode is dead-lettered with its source position (by every
replica, each naming itself) and the listener moves on.

The same holds after a rejoin. The consumer commits nothing, so when it gets
its partitions again (the embedded broker restarted empty and forgot the group,
or the coordinator dropped this member) it starts again from the latest
offsets, past any promotion published while it was out. Every assignment after
the first one therefore calls `on_reassigned` in a background task once the new
positions are known, as start-up does; records fetched under the previous
assignment and not yet handled are dropped, since that call covers them.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import IllegalStateError
from driftloop.v1 import events_pb2
from driftloop_core.kafka.consumer import PoisonMessage, Record, group_consumer
from driftloop_core.kafka.deadletter import DeadLetterWriter
from driftloop_core.kafka.headers import parse_headers
from driftloop_core.settings import Settings
from google.protobuf.message import DecodeError
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind

log = structlog.get_logger(__name__)
_tracer = trace.get_tracer("driftloop.inference")

OnPromoted = Callable[[events_pb2.ModelPromoted], Awaitable[None]]
# Called after a rejoin, once the new positions are known: catch up on the
# promotions published before them.
OnReassigned = Callable[[], Awaitable[None]]


class PromotionListener:
    def __init__(
        self,
        settings: Settings,
        topic: str,
        model: str,
        group_prefix: str,
        on_promoted: OnPromoted,
        deadletters: DeadLetterWriter | None = None,
        on_reassigned: OnReassigned | None = None,
    ) -> None:
        self._model = model
        self._topic = topic
        self._on_promoted = on_promoted
        self._on_reassigned = on_reassigned
        self._deadletters = deadletters
        self.group_id = f"{group_prefix}-{uuid.uuid4().hex[:12]}"
        self._consumer: AIOKafkaConsumer = group_consumer(
            settings,
            group_id=self.group_id,
            client_suffix="promotions",
            auto_offset_reset="latest",
        )
        self._consumer.subscribe([topic], listener=_Rejoins(self._assigned))
        self._stopping = asyncio.Event()
        self._started = False
        # Rejoins so far, and their catch-ups still running.
        self._rejoins = 0
        self._catch_ups: set[asyncio.Task[None]] = set()

    async def start(self, assignment_timeout_s: float = 15.0) -> None:
        """Join the group and fix the starting positions (the latest offsets)."""
        await self._consumer.start()
        deadline = asyncio.get_running_loop().time() + assignment_timeout_s
        while not self._consumer.assignment():
            if asyncio.get_running_loop().time() > deadline:
                log.warning("promotions_assignment_slow", group=self.group_id)
                # The assignment that comes later catches up like a rejoin.
                self._started = True
                return
            # getmany drives the group join; nothing can be returned before assignment.
            await self._consumer.getmany(timeout_ms=100)
        for partition in self._consumer.assignment():
            await self._consumer.position(partition)
        self._started = True

    def _assigned(self, partitions: set[TopicPartition]) -> None:
        """An assignment after start-up (which covers the first one): catch up in
        the background, so the rejoin itself is not held up by the registry or a
        model load. A catch-up still running from an earlier rejoin goes on: it
        may be loading a model, and both answers are the registry's state."""
        if not self._started or self._on_reassigned is None or self._stopping.is_set():
            return
        self._rejoins += 1
        log.info(
            "promotions_reassigned",
            group=self.group_id,
            partitions=len(partitions),
            rejoins=self._rejoins,
        )
        self._catch_ups.add(
            asyncio.create_task(self._caught_up(partitions), name="promotions-catch-up")
        )

    async def _caught_up(self, partitions: set[TopicPartition]) -> None:
        """Wait for the new positions (anything published after them arrives as
        a record), then let the service compare its model with the registry."""
        assert self._on_reassigned is not None
        try:
            for partition in partitions:
                await self._consumer.position(partition)
        except IllegalStateError:
            return  # reassigned again meanwhile: that assignment catches up
        await self._on_reassigned()

    async def run(self) -> None:
        while not self._stopping.is_set():
            batches = await self._consumer.getmany(timeout_ms=200)
            # aiokafka returns records of the current assignment only; a rejoin
            # while they are handled makes the rest stale.
            rejoins = self._rejoins
            for done in [task for task in self._catch_ups if task.done()]:
                self._catch_ups.discard(done)
                done.result()  # a catch-up that failed ends the listener, like a handler
            for records in batches.values():
                for record in records:
                    if self._rejoins != rejoins:
                        # Older than what the rejoin's catch-up reads from the
                        # registry, so not applied after it.
                        break
                    await self._handle(record)

    async def _handle(self, record: Any) -> None:
        headers: Sequence[tuple[str, bytes]] = record.headers or ()
        try:
            promoted = events_pb2.ModelPromoted.FromString(record.value or b"")
        except DecodeError as error:
            log.warning(
                "promotion_undecodable",
                partition=record.partition,
                offset=record.offset,
                error=str(error),
            )
            if self._deadletters is not None:
                await self._deadletters.write(
                    Record(
                        topic=record.topic,
                        partition=record.partition,
                        offset=record.offset,
                        key=record.key,
                        value=record.value or b"",
                        headers=parse_headers(headers),
                        raw_headers=tuple(headers),
                        timestamp_ms=record.timestamp,
                    ),
                    PoisonMessage(f"value is not a ModelPromoted: {error}", rule="decode"),
                )
            return
        if promoted.model != self._model:
            return
        log.info(
            "model_promoted_received",
            model=promoted.model,
            to_version=promoted.to_version,
            kind=events_pb2.PromotionKind.Name(promoted.kind),
        )
        # The promotion's trace goes on here: download, load, warm-up and swap are
        # its children, and the first request the new version answers ends it.
        carrier = {k: v.decode("utf-8", "replace") for k, v in headers if v is not None}
        with (
            _tracer.start_as_current_span(
                f"process {self._topic}",
                context=propagate.extract(carrier),
                kind=SpanKind.CONSUMER,
                attributes={
                    "messaging.system": "kafka",
                    "messaging.destination.name": self._topic,
                    "messaging.operation.type": "process",
                },
            ),
            _tracer.start_as_current_span(
                "inference.model_swap",
                attributes={
                    "driftloop.model": promoted.model,
                    "driftloop.model_version": promoted.to_version,
                },
            ),
        ):
            await self._on_promoted(promoted)

    def request_stop(self) -> None:
        self._stopping.set()

    async def stop(self) -> None:
        self._stopping.set()
        for task in self._catch_ups:
            task.cancel()
        await asyncio.gather(*self._catch_ups, return_exceptions=True)
        self._catch_ups.clear()
        await self._consumer.stop()


class _Rejoins(ConsumerRebalanceListener):  # type: ignore[misc]
    """aiokafka's rebalance callbacks: each assignment goes to `on_assigned`."""

    def __init__(self, on_assigned: Callable[[set[TopicPartition]], None]) -> None:
        self._on_assigned = on_assigned

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        return None

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._on_assigned(set(assigned))
