"""The one consume loop of every Driftloop consumer: decode -> handle -> outcome.

A service hands the loop a handler, either per record (`handle`, inside the
record's CONSUMER span, raising `PoisonMessage` for a record that can never
succeed) or per fetched batch (`handle_batch`, returning one outcome per record:
`None` or the `PoisonMessage` to dead-letter). The loop owns everything else:

* transient errors (`retry.is_transient`: database, filesystem, network,
  broker) are retried with backoff for as long as the loop runs, and never
  dead-lettered; on stop the record in hand is left uncommitted;
* a `PoisonMessage` goes to the dead-letter topic with its source position,
  and the partition moves on; a per-record handler's unexpected error (a bug)
  is dead-lettered too, with its traceback logged once; a batch handler's ends
  the loop, uncommitted;
* progress is kept by the policy (`policies.py`): committed after the batch,
  after a durable flush, stored by the service, or not at all;
* only partitions this member still owns are committed; a commit the group
  refuses is logged and skipped (the next owner reads those records again and
  every handler is idempotent);
* the consumed counter and the lag gauge.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import structlog
from aiokafka import TopicPartition
from opentelemetry.trace import Status, StatusCode

from driftloop_core.kafka.assignment import (
    Rebalances,
    assign_all,
    commit_owned,
    first_assignment,
    known_positions,
    record_lag,
)
from driftloop_core.kafka.consumer import CONSUMED, group_consumer, reader
from driftloop_core.kafka.deadletter import DeadLetterWriter
from driftloop_core.kafka.policies import (
    CommitAfterBatch,
    FlushThenCommit,
    FromLatest,
    Policy,
    StoredOffsets,
)
from driftloop_core.kafka.publisher import Publisher
from driftloop_core.kafka.record import PoisonMessage, Record
from driftloop_core.kafka.retry import Stopped, is_transient, until_done
from driftloop_core.kafka.spans import batch_span, record_span
from driftloop_core.kafka.topics import Topics
from driftloop_core.settings import Settings

log = structlog.get_logger(__name__)

RecordHandler = Callable[[Record], Awaitable[None]]
BatchHandler = Callable[[Sequence[Record]], Awaitable[Sequence[PoisonMessage | None]]]


@dataclass
class LoopStats:
    """What the loop has done, for logs, tests and load tests (perf_counter seconds)."""

    batches: int = 0
    records: int = 0
    deadlettered: int = 0
    first_fetched_at: float | None = None
    last_committed_at: float | None = None


class ConsumerLoop:
    """One Kafka consumer running one handler under one commit policy."""

    def __init__(
        self,
        settings: Settings,
        *,
        topics: Iterable[str],
        group_id: str,
        publisher: Publisher,
        handle: RecordHandler | None = None,
        handle_batch: BatchHandler | None = None,
        policy: Policy | None = None,
        deadletter_topic: str = Topics.DEADLETTER,
        after_poll: Callable[[], Awaitable[None]] | None = None,
        client_suffix: str = "",
        consumer_options: dict[str, Any] | None = None,
        consumer: Any | None = None,
    ) -> None:
        if (handle is None) == (handle_batch is None):
            raise ValueError("give exactly one of handle and handle_batch")
        self._settings = settings
        self._kafka = settings.kafka
        self._topics = tuple(topics)
        self.group_id = group_id
        self._handle = handle
        self._handle_batch = handle_batch
        self._policy: Policy = policy or CommitAfterBatch()
        self._deadletters = DeadLetterWriter(publisher, deadletter_topic, settings.service_name)
        self._after_poll = after_poll
        self._client_suffix = client_suffix
        self._options = dict(consumer_options or {})
        self._consumer: Any = consumer
        self._stopping = asyncio.Event()
        self._started = False
        self.stats = LoopStats()
        self._progress = asyncio.Condition()
        # StoredOffsets: every position so far. FlushThenCommit: what was taken
        # since the last flush, and since when.
        self._positions: dict[TopicPartition, int] = {}
        self._taken = 0
        self._first_taken_at = 0.0
        # Taking records and flushing them never interleave, also not with the
        # flush a rebalance triggers from the coordinator's task.
        self._lock = asyncio.Lock()
        # FromLatest: assignments after the first, and their catch-ups.
        self._first_assignment_done = False
        self._rejoins = 0
        self._catch_ups: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        policy = self._policy
        if isinstance(policy, StoredOffsets):
            stored = await policy.load()
        if self._consumer is None:
            self._consumer = self._build()
        consumer = self._consumer
        await consumer.start()
        self._started = True
        if isinstance(policy, StoredOffsets):
            self._positions.update(await assign_all(consumer, self._topics, stored))
            return
        consumer.subscribe(list(self._topics), listener=Rebalances(self._revoked, self._assigned))
        if isinstance(policy, FromLatest):
            await first_assignment(consumer, self.group_id, policy.assignment_timeout_s)
            self._first_assignment_done = True

    async def rewind(self) -> int:
        """Read every partition of the topics again from its beginning, as the
        broker describes them now (a topic recreated on a new broker may have
        other partitions); for a loop in no group (`StoredOffsets`). Records
        fetched before are dropped with the old assignment. Returns how many
        partitions are assigned."""
        if not isinstance(self._policy, StoredOffsets) or self._consumer is None:
            raise RuntimeError("only a started loop in no group can rewind")
        self._positions.clear()
        await assign_all(self._consumer, self._topics, {})
        return len(self._consumer.assignment())

    def _build(self) -> Any:
        if isinstance(self._policy, StoredOffsets):
            return reader(self._settings, client_suffix=self._client_suffix, **self._options)
        options = dict(self._options)
        if isinstance(self._policy, FromLatest):
            options.setdefault("auto_offset_reset", "latest")
        return group_consumer(
            self._settings, group_id=self.group_id, client_suffix=self._client_suffix, **options
        )

    @property
    def stopping(self) -> asyncio.Event:
        """Set once the loop was asked to stop: a handler that waits on something
        may give up early by raising `retry.Stopped`, leaving its record uncommitted."""
        return self._stopping

    def request_stop(self) -> None:
        """Finish the record (or batch) in hand, settle it, and leave the loop."""
        self._stopping.set()

    async def stop(self) -> None:
        self.request_stop()
        for task in self._catch_ups:
            task.cancel()
        await asyncio.gather(*self._catch_ups, return_exceptions=True)
        self._catch_ups.clear()
        if self._consumer is not None and self._started:
            self._started = False
            await self._consumer.stop()

    async def wait_handled(self, records: int) -> None:
        """Return once at least `records` records were handled and settled."""
        async with self._progress:
            await self._progress.wait_for(lambda: self.stats.records >= records)

    # ------------------------------------------------------------------ the loop

    async def run(self) -> None:
        """Consume until `request_stop()`. Raises when a record can be neither
        handled nor dead-lettered; its offset stays uncommitted then."""
        consumer = self._consumer
        assert consumer is not None, "ConsumerLoop.start() was not awaited"
        in_flight = self._policy.in_flight if isinstance(self._policy, CommitAfterBatch) else 1
        previous: asyncio.Task[None] | None = None
        while not self._stopping.is_set():
            self._raise_failed_catch_ups()
            if previous is not None and previous.done():
                previous.result()  # a failed batch ends the loop, uncommitted
            fetched = await consumer.getmany(
                timeout_ms=self._poll_timeout_ms(), max_records=self._max_records()
            )
            rejoins = self._rejoins
            if fetched:
                if self.stats.first_fetched_at is None:
                    self.stats.first_fetched_at = time.perf_counter()
                records = [Record.from_message(m) for ms in fetched.values() for m in ms]
                current = asyncio.create_task(self._process(records, rejoins, after=previous))
                if in_flight == 1:
                    await current
                    previous = None
                else:
                    if previous is not None:
                        await _in_order(previous, current)
                    previous = current
            await self._flush_if_due()
            if self._after_poll is not None:
                await self._after_poll()
        if previous is not None:
            await previous
        if isinstance(self._policy, FlushThenCommit):
            await self.flush()

    def _raise_failed_catch_ups(self) -> None:
        for done in [task for task in self._catch_ups if task.done()]:
            self._catch_ups.discard(done)
            done.result()  # a failed catch-up ends the loop, like a handler

    def _max_records(self) -> int:
        # A batch length given in consumer_options holds for every fetch.
        batch = int(self._options.get("max_poll_records", self._kafka.max_poll_records))
        if isinstance(self._policy, FlushThenCommit):
            return max(1, min(batch, self._policy.records - self._taken))
        return batch

    def _poll_timeout_ms(self) -> int:
        if not isinstance(self._policy, FlushThenCommit) or not self._taken:
            return 200
        left = self._first_taken_at + self._policy.interval_s - time.monotonic()
        return max(0, min(200, math.ceil(left * 1000)))

    async def _process(
        self, records: list[Record], rejoins: int, *, after: asyncio.Task[None] | None
    ) -> None:
        # Only a flushing policy must keep taking and flushing apart; a second
        # batch in flight must not wait for the first one's acknowledgements.
        exclusive: AbstractAsyncContextManager[Any] = (
            self._lock if isinstance(self._policy, FlushThenCommit) else nullcontext()
        )
        async with exclusive:
            if self._handle is not None:
                done, dead = await self._each(records, rejoins)
            else:
                done, dead = await self._batch(records)
            if after is not None:
                await after
            await self._settle(done)
        self.stats.batches += 1
        self.stats.records += len(done)
        self.stats.deadlettered += dead
        self.stats.last_committed_at = time.perf_counter()
        async with self._progress:
            self._progress.notify_all()

    async def _each(self, records: list[Record], rejoins: int) -> tuple[list[Record], int]:
        """Handle records one by one; returns those handled and how many were dead."""
        done: list[Record] = []
        dead = 0
        for record in records:
            if self._rejoins != rejoins:
                # Fetched under an earlier assignment: the rejoin's catch-up covers it.
                break
            try:
                poison = await self._one(record)
            except Stopped:
                break
            if poison is not None:
                await self._deadletters.write_many([(record, poison)])
                dead += 1
            CONSUMED.labels(
                self.group_id, record.topic, "ok" if poison is None else "deadlettered"
            ).inc()
            done.append(record)
            if self._stopping.is_set():
                break
        return done, dead

    async def _one(self, record: Record) -> PoisonMessage | None:
        assert self._handle is not None
        handle = self._handle
        with record_span(record, self.group_id) as span:
            try:
                await until_done(
                    self._kafka, f"handle {record.topic}", lambda: handle(record), self._stopping
                )
                return None
            except PoisonMessage as poison:
                span.set_status(_error(poison.reason))
                return poison
            except Stopped:
                raise
            except Exception as error:
                log.exception(
                    "handler_failed",
                    topic=record.topic,
                    partition=record.partition,
                    offset=record.offset,
                )
                reason = f"handler raised {type(error).__name__}: {error}"
                span.set_status(_error(reason))
                return PoisonMessage(reason, rule="handler_error")

    async def _batch(self, records: list[Record]) -> tuple[list[Record], int]:
        assert self._handle_batch is not None
        handle_batch = self._handle_batch
        with batch_span(records, self.group_id):
            try:
                outcomes = await until_done(
                    self._kafka,
                    f"handle a batch of {len(records)}",
                    lambda: handle_batch(records),
                    self._stopping,
                )
            except Stopped:
                return [], 0
            dead = [
                (record, outcome)
                for record, outcome in zip(records, outcomes, strict=True)
                if outcome is not None
            ]
            if dead:
                await self._deadletters.write_many(dead)
        topic_counts: dict[tuple[str, str], int] = {}
        for record, outcome in zip(records, outcomes, strict=True):
            key = (record.topic, "ok" if outcome is None else "deadlettered")
            topic_counts[key] = topic_counts.get(key, 0) + 1
        for (topic, outcome_name), count in topic_counts.items():
            CONSUMED.labels(self.group_id, topic, outcome_name).inc(count)
        return records, len(dead)

    # ------------------------------------------------------------------ progress

    async def _settle(self, done: list[Record]) -> None:
        """Keep the progress of the records handled, as the policy says."""
        if not done:
            return
        positions: dict[TopicPartition, int] = {}
        for record in done:
            positions[TopicPartition(record.topic, record.partition)] = record.offset + 1
        policy = self._policy
        if isinstance(policy, CommitAfterBatch):
            await commit_owned(self._consumer, self.group_id, positions)
        elif isinstance(policy, StoredOffsets):
            self._positions.update(positions)
            await policy.store({(tp.topic, tp.partition): p for tp, p in self._positions.items()})
            record_lag(self._consumer, self.group_id, positions)
        elif isinstance(policy, FlushThenCommit):
            if not self._taken:
                self._first_taken_at = time.monotonic()
            self._taken += len(done)
            self._positions.update(positions)

    async def _flush_if_due(self) -> None:
        policy = self._policy
        if not isinstance(policy, FlushThenCommit) or not self._taken:
            return
        elapsed = time.monotonic() - self._first_taken_at
        if self._taken >= policy.records or elapsed >= policy.interval_s:
            await self.flush()

    async def flush(self) -> None:
        """FlushThenCommit: make what was taken durable, then commit it."""
        policy = self._policy
        assert isinstance(policy, FlushThenCommit)
        async with self._lock:
            if not self._positions:
                return
            try:
                await until_done(self._kafka, "flush", policy.flush, self._stopping)
            except Stopped:
                return  # left uncommitted: replayed into files of the same names
            positions = dict(self._positions)
            self._positions.clear()
            self._taken = 0
            await commit_owned(self._consumer, self.group_id, positions)

    # ------------------------------------------------------------------ rebalances

    async def _revoked(self) -> None:
        # Still a member of the old generation: what was taken can be made
        # durable and committed before another member takes the partitions over.
        if isinstance(self._policy, FlushThenCommit):
            await self.flush()

    def _assigned(self, partitions: set[TopicPartition]) -> None:
        policy = self._policy
        log.info("partitions_assigned", group=self.group_id, partitions=len(partitions))
        if not isinstance(policy, FromLatest) or policy.on_reassigned is None:
            return
        if not self._first_assignment_done or self._stopping.is_set():
            return
        # A rejoin (the broker restarted empty, or the coordinator dropped this
        # member): the service catches up in the background once the new
        # positions are known, so the rejoin itself is not held up.
        self._rejoins += 1
        log.info("reassigned", group=self.group_id, rejoins=self._rejoins)
        self._catch_ups.add(
            asyncio.create_task(self._catch_up(partitions, policy.on_reassigned), name="catch-up")
        )

    async def _catch_up(
        self, partitions: set[TopicPartition], on_reassigned: Callable[[], Awaitable[None]]
    ) -> None:
        # Reassigned again meanwhile: that assignment catches up.
        if await known_positions(self._consumer, partitions):
            await on_reassigned()


async def _in_order(previous: asyncio.Task[None], current: asyncio.Task[None]) -> None:
    """Wait for the batch before `current`; if it failed, `current` must not
    commit past it."""
    try:
        await previous
    except BaseException:
        current.cancel()
        await asyncio.wait([current])
        if not current.cancelled():
            current.exception()  # the same failure, seen through `after`
        raise


def _error(reason: str) -> Status:
    return Status(StatusCode.ERROR, reason)


__all__ = ["BatchHandler", "ConsumerLoop", "LoopStats", "RecordHandler", "is_transient"]
