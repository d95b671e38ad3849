"""Dead-letter records: what failed, why, and exactly where it came from.

A dead-letter record keeps the raw payload and its source topic, partition and
offset, so an operator can inspect it and replay it once the cause is fixed.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

import structlog
from driftloop.v1 import events_pb2

from driftloop_core.kafka.publisher import Outgoing
from driftloop_core.kafka.topics import kind_of_message

log = structlog.get_logger(__name__)
_DEADLETTER_TYPE = kind_of_message("driftloop.v1.DeadLetter").ce_type

if TYPE_CHECKING:
    from driftloop_core.kafka.publisher import Publisher
    from driftloop_core.kafka.record import PoisonMessage, Record


class _Failure(Protocol):
    reason: str
    field: str
    rule: str
    payload: bytes | None


def build_deadletter(
    record: Record, failure: _Failure, service: str, event_id: str = ""
) -> events_pb2.DeadLetter:
    letter = events_pb2.DeadLetter(
        reason=failure.reason,
        field=failure.field,
        rule=failure.rule,
        payload=record.value if failure.payload is None else failure.payload,
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
        await self.write_many([(record, failure)])

    async def write_many(self, failed: Sequence[tuple[Record, PoisonMessage]]) -> None:
        """Dead-letter records in one batch; raises if the broker refuses them
        (the caller then commits nothing)."""
        letters: list[Outgoing] = []
        for record, failure in failed:
            letter = build_deadletter(record, failure, self._service, failure.event_id)
            letters.append(
                Outgoing(
                    self._topic,
                    letter.SerializeToString(),
                    record.key,
                    _DEADLETTER_TYPE,
                    extra_headers={
                        "dl_reason": failure.reason[:200],
                        "dl_source": f"{record.topic}/{record.partition}/{record.offset}",
                    },
                )
            )
        if not letters:
            return
        await self._publisher.publish_batch(letters, trace_batch=len(letters) > 1)
        first = failed[0][1]
        log.info(
            "records_deadlettered",
            count=len(letters),
            topic=self._topic,
            first_reason=first.reason[:200],
            first_field=first.field,
            first_rule=first.rule,
        )
