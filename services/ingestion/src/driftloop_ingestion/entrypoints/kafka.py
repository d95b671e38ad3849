"""`events.raw` in: JSON lines from any producer, ingested a fetched batch at a time.

Handling one record at a time caps ingestion far below its target rate, so the
core `ConsumerLoop` hands `RawEvents` whole fetched batches; it converts them
for the ingestor and its outcomes back. The loop keeps the guarantees, with
two batches in flight and their commits in order (`CommitAfterBatch(in_flight=2)`,
see `bootstrap.build_consumer`):

* offsets are committed only after the batch's valid events were published and
  indexed and its invalid records were dead-lettered, so a crash replays a
  batch (deduplicated by event id) and never skips one;
* each invalid record is dead-lettered with the reason, field and rule, its raw
  payload and its source topic/partition/offset, so no bad record blocks its
  partition; a payload over the size limit is kept cut to the limit, so its
  dead letter fits a produce request;
* a write that fails transiently (the broker, the index) is retried with
  backoff; one that fails for good ends the loop with nothing committed, and
  the process exits and is restarted to try again.

Records need no headers (`kcat` and `kafka-console-producer` write none). A
record without an `event_id` gets one derived from its topic, partition,
offset and timestamp, so replaying it yields the same id while a fresh
in-memory broker reusing offsets does not.
"""

from __future__ import annotations

from collections.abc import Sequence

from driftloop_core.kafka.record import PoisonMessage, Record

from driftloop_ingestion.handlers import Ingestor
from driftloop_ingestion.ports import Incoming
from driftloop_ingestion.rules import RULE_SIZE, Rejection


class RawEvents:
    """The batch handler of `events.raw`: one outcome per record, in order."""

    def __init__(self, ingestor: Ingestor, *, max_event_bytes: int) -> None:
        self._ingestor = ingestor
        self._max_event_bytes = max_event_bytes

    async def __call__(self, records: Sequence[Record]) -> list[PoisonMessage | None]:
        outcomes = await self._ingestor.ingest(
            [
                Incoming(
                    record.value,
                    (record.topic, record.partition, record.offset, record.timestamp_ms),
                )
                for record in records
            ],
            source="kafka",
        )
        return [
            self._poison(record, outcome) if isinstance(outcome, Rejection) else None
            for record, outcome in zip(records, outcomes, strict=True)
        ]

    def _poison(self, record: Record, rejection: Rejection) -> PoisonMessage:
        cut = rejection.rule == RULE_SIZE
        return PoisonMessage(
            rejection.reason,
            field=rejection.field,
            rule=rejection.rule,
            event_id=rejection.event_id,
            payload=record.value[: self._max_event_bytes] if cut else None,
        )
