"""`models.promoted` in: every replica loads every promotion (and rollback) of its model.

A group consumer whose group id is unique to this process, starting from the
latest offsets: what happened before the process started is covered by the
registry's GetChampion at start, which runs only once this consumer holds its
partitions and knows its positions, so no promotion falls in between. A record
that does not decode is dead-lettered with its source position (by every
replica, each naming itself) and the listener moves on.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer
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


class PromotionListener:
    def __init__(
        self,
        settings: Settings,
        topic: str,
        model: str,
        group_prefix: str,
        on_promoted: OnPromoted,
        deadletters: DeadLetterWriter | None = None,
    ) -> None:
        self._model = model
        self._topic = topic
        self._on_promoted = on_promoted
        self._deadletters = deadletters
        self.group_id = f"{group_prefix}-{uuid.uuid4().hex[:12]}"
        self._consumer: AIOKafkaConsumer = group_consumer(
            settings,
            topic,
            group_id=self.group_id,
            client_suffix="promotions",
            auto_offset_reset="latest",
        )
        self._stopping = asyncio.Event()

    async def start(self, assignment_timeout_s: float = 15.0) -> None:
        """Join the group and fix the starting positions (the latest offsets)."""
        await self._consumer.start()
        deadline = asyncio.get_running_loop().time() + assignment_timeout_s
        while not self._consumer.assignment():
            if asyncio.get_running_loop().time() > deadline:
                log.warning("promotions_assignment_slow", group=self.group_id)
                return
            # getmany drives the group join; nothing can be returned before assignment.
            await self._consumer.getmany(timeout_ms=100)
        for partition in self._consumer.assignment():
            await self._consumer.position(partition)

    async def run(self) -> None:
        while not self._stopping.is_set():
            batches = await self._consumer.getmany(timeout_ms=200)
            for records in batches.values():
                for record in records:
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
        await self._consumer.stop()
