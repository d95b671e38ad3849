"""Dead-letter records: what failed, why, and exactly where it came from.

A dead-letter record keeps the raw payload and its source topic, partition and
offset, so an operator can inspect it and replay it once the cause is fixed.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

from driftloop.v1 import events_pb2

from driftloop_core.kafka.topics import kind_of_message

if TYPE_CHECKING:
    from driftloop_core.kafka.consumer import PoisonMessage, Record
    from driftloop_core.kafka.publisher import Publisher


class _Failure(Protocol):
    reason: str
    field: str
    rule: str


def build_deadletter(
    record: Record, failure: _Failure, service: str, event_id: str = ""
) -> events_pb2.DeadLetter:
    letter = events_pb2.DeadLetter(
        reason=failure.reason,
        field=failure.field,
        rule=failure.rule,
        payload=record.value,
        source_topic=record.topic,
        source_partition=record.partition,
        source_offset=record.offset,
        key=record.key or b"",
        service=service,
        event_id=event_id or record.headers.id,
        headers=[
            events_pb2.KafkaHeader(key=key, value=value or b"") for key, value in record.raw_headers
        ],
    )
    letter.failed_at.FromDatetime(datetime.now(UTC))
    return letter


class DeadLetterWriter:
    def __init__(self, publisher: Publisher, topic: str, service: str) -> None:
        self._publisher = publisher
        self._topic = topic
        self._service = service

    async def write(self, record: Record, failure: PoisonMessage) -> None:
        letter = build_deadletter(record, failure, self._service, failure.event_id)
        kind = kind_of_message(letter.DESCRIPTOR.full_name)
        await self._publisher.publish(
            self._topic,
            letter.SerializeToString(),
            key=record.key,
            ce_type=kind.ce_type,
            extra_headers={
                "dl_reason": failure.reason[:200],
                "dl_source": f"{record.topic}/{record.partition}/{record.offset}",
            },
        )
