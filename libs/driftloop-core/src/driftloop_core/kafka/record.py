"""What a consumer hands a service: one record, and the two ways a record can fail.

`Record.from_message` is the only place an aiokafka message becomes a `Record`.
A handler signals a record that can never succeed with `PoisonMessage` (it is
dead-lettered and the partition moves on) and a passing outage with
`TransientError` (or any error `retry.is_transient` recognises): the record is
retried and never dead-lettered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from driftloop_core.kafka.headers import EventHeaders, parse_headers


class PoisonMessage(Exception):
    """A record that can never be handled; it goes to the dead-letter topic.

    `payload` replaces the record's value in the dead letter when the value
    itself must not be kept whole (one over the size limit is kept cut)."""

    def __init__(
        self,
        reason: str,
        *,
        field: str = "",
        rule: str = "",
        event_id: str = "",
        payload: bytes | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field
        self.rule = rule
        self.event_id = event_id
        self.payload = payload


class TransientError(Exception):
    """A passing failure (a dependency is down); the record is retried."""


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: EventHeaders
    raw_headers: tuple[tuple[str, bytes], ...]
    timestamp_ms: int

    @classmethod
    def from_message(cls, message: Any) -> Record:
        """A record from an aiokafka `ConsumerRecord`."""
        raw = tuple(message.headers or ())
        return cls(
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            key=message.key,
            value=message.value if message.value is not None else b"",
            headers=parse_headers(raw),
            raw_headers=raw,
            timestamp_ms=message.timestamp,
        )

    @property
    def key_str(self) -> str:
        return self.key.decode(errors="replace") if self.key is not None else ""
