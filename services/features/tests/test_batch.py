"""The agent applies `events.valid` in batches: each record sees the state the one
before it left, every row is published before the state that counts it is
written, each entity is written once per batch, and a batch retried after a
transient error or read again after a crash counts no event twice."""

from __future__ import annotations

import asyncio
import errno
import functools
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from driftloop.v1 import common_pb2, events_pb2, features_pb2
from driftloop_core.feature_math import EntityState, FeatureMath
from driftloop_core.featureset import default_featureset_path, load_featureset
from driftloop_core.kafka import Outgoing, PoisonMessage, Record, Topics
from driftloop_core.kafka.headers import make_headers, parse_headers
from driftloop_core.kafka.retry import until_done
from driftloop_core.settings import KafkaSettings
from driftloop_features.entrypoints.events import Batch, EventsAgent
from driftloop_features.stream import OBSERVED, StreamHandler
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY

FS = load_featureset(default_featureset_path())
T0 = 1_763_800_000_000
KAFKA = KafkaSettings(retry_backoff_initial_s=0.001, retry_backoff_max_s=0.01)
tracer = trace.get_tracer(__name__)


def observation(
    offset: int, event_id: str, entity: str, t_ms: int, *, partition: int = 0
) -> Record:
    """An observation of `entity` read at (partition, offset), sent in a trace of its own."""
    message = events_pb2.Observation(event_id=event_id, entity_id=entity, feature_set=FS.name)
    message.event_time.FromMilliseconds(t_ms)
    message.values["amount"].CopyFrom(common_pb2.FeatureValue(float_value=10.0))
    with tracer.start_as_current_span(f"send {event_id}"):
        headers = make_headers(OBSERVED, "/test", event_id=event_id).to_kafka()
    return Record(
        Topics.VALID, partition, offset, entity.encode(), message.SerializeToString(),
        parse_headers(headers), tuple(headers), t_ms,
    )  # fmt: skip


class Table(dict[str, Any]):
    """The entity table, logging its writes to `log` beside the rows sent."""

    def __init__(self, log: list[tuple[str, str]]) -> None:
        super().__init__()
        self.log = log
        self.fail: Callable[[str], BaseException | None] = lambda key: None

    def __setitem__(self, key: str, value: Any) -> None:
        error = self.fail(key)
        if error is not None:
            raise error
        self.log.append(("state", key))
        super().__setitem__(key, value)


class Store:
    """An agent over a table, recording what it sends and dead-letters."""

    def __init__(self, table: Table | None = None) -> None:
        self.log: list[tuple[str, str]] = table.log if table is not None else []
        self.table = table if table is not None else Table(self.log)
        self.rows: list[features_pb2.TrainingRow] = []
        self.sent: list[Outgoing] = []
        # The trace current as each row is sent (the one its headers carry).
        self.send_traces: list[int] = []
        self.deadlettered: list[list[tuple[Record, PoisonMessage]]] = []
        self.fail_send: Callable[[Outgoing], BaseException | None] = lambda outgoing: None
        self.handler = StreamHandler(FeatureMath(FS), self.table, clock=lambda: T0 / 1000)
        self.agent = EventsAgent(self.handler, self.send, self.deadletter, group="test")

    async def send(self, outgoing: Outgoing) -> None:
        error = self.fail_send(outgoing)
        if error is not None:
            raise error
        row = features_pb2.TrainingRow.FromString(outgoing.value)
        self.log.append(("row", row.entity_id))
        self.rows.append(row)
        self.sent.append(outgoing)
        self.send_traces.append(trace.get_current_span().get_span_context().trace_id)

    async def deadletter(self, poisoned: Sequence[tuple[Record, PoisonMessage]]) -> None:
        self.deadlettered.append(list(poisoned))

    async def run(self, batch: Batch) -> None:
        """Process the batch as the Faust agent does: retried until it is done."""
        work = functools.partial(self.agent.process, batch)
        await until_done(KAFKA, "handle a batch", work, asyncio.Event())

    def counted(self, entity: str) -> list[str]:
        """The event ids the entity's saved state holds."""
        return [e.event_id for e in EntityState.from_json(self.table.get(entity)).events]


def row_count(store: Store, event_id: str) -> list[int | float]:
    """txn_count_10m of every row sent for `event_id`."""
    return [
        row.features["txn_count_10m"].int_value for row in store.rows if row.event_id == event_id
    ]


def applied_total() -> float:
    value = REGISTRY.get_sample_value("driftloop_features_events_total", {"outcome": "applied"})
    return value or 0.0


def mixed_batch() -> list[Record]:
    """Three entities interleaved, in offset order."""
    return [
        observation(0, "a1", "ca", T0 - 5000),
        observation(1, "b1", "cb", T0 - 4000),
        observation(2, "a2", "ca", T0 - 3000),
        observation(3, "c1", "cc", T0 - 2500),
        observation(4, "b2", "cb", T0 - 2000),
        observation(5, "a3", "ca", T0 - 1000),
    ]


async def test_a_batch_writes_each_entity_once_after_its_rows() -> None:
    store = Store()
    applied_before = applied_total()

    await store.run(Batch(mixed_batch()))

    # Each record saw the state the one before it in the batch left.
    assert row_count(store, "a1") == [0]
    assert row_count(store, "a2") == [1]
    assert row_count(store, "a3") == [2]
    assert row_count(store, "b2") == [1]
    # One write per entity, after every row of that entity.
    writes = [key for kind, key in store.log if kind == "state"]
    assert sorted(writes) == ["ca", "cb", "cc"]
    for entity in writes:
        last_row = max(i for i, item in enumerate(store.log) if item == ("row", entity))
        assert store.log.index(("state", entity)) > last_row
    assert store.counted("ca") == ["a1", "a2", "a3"]
    assert store.counted("cb") == ["b1", "b2"]
    assert store.counted("cc") == ["c1"]
    assert applied_total() - applied_before == 6


async def test_a_transient_send_error_resumes_the_batch_and_counts_each_event_once() -> None:
    store = Store()
    failures = iter([OSError(errno.EIO, "Input/output error")] * 3)
    store.fail_send = lambda outgoing: next(failures, None) if outgoing.event_id == "c1" else None
    applied_before = applied_total()

    await store.run(Batch(mixed_batch()))

    # Rows of the records before the failing one went out once, not again.
    assert [outgoing.event_id for outgoing in store.sent] == ["a1", "b1", "a2", "c1", "b2", "a3"]
    assert row_count(store, "a3") == [2]
    assert store.counted("ca") == ["a1", "a2", "a3"]
    assert store.counted("cc") == ["c1"]
    assert sorted(key for kind, key in store.log if kind == "state") == ["ca", "cb", "cc"]
    assert applied_total() - applied_before == 6


async def test_a_transient_table_error_is_retried_without_publishing_or_counting_again() -> None:
    store = Store()
    failures = iter([OSError(errno.ENOSPC, "No space left on device")] * 2)
    store.table.fail = lambda key: next(failures, None) if key == "cb" else None
    applied_before = applied_total()

    await store.run(Batch(mixed_batch()))

    assert [outgoing.event_id for outgoing in store.sent] == ["a1", "b1", "a2", "c1", "b2", "a3"]
    assert store.counted("ca") == ["a1", "a2", "a3"]
    assert store.counted("cb") == ["b1", "b2"]
    assert sorted(key for kind, key in store.log if kind == "state") == ["ca", "cb", "cc"]
    assert applied_total() - applied_before == 6


async def test_a_batch_that_crashed_is_counted_once_when_read_again() -> None:
    # The worker fails on the fourth record: nothing of the batch is saved.
    crashed = Store()
    crashed.fail_send = lambda outgoing: (
        PermissionError(errno.EACCES, "Permission denied") if outgoing.event_id == "c1" else None
    )
    with pytest.raises(PermissionError):
        await crashed.run(Batch(mixed_batch()))
    assert [key for kind, key in crashed.log if kind == "state"] == []

    # The restarted worker reads the whole batch again from the same table.
    restarted = Store(crashed.table)
    await restarted.run(Batch(mixed_batch()))

    assert row_count(restarted, "a3") == [2]
    assert restarted.counted("ca") == ["a1", "a2", "a3"]
    assert restarted.counted("cb") == ["b1", "b2"]
    assert restarted.counted("cc") == ["c1"]


async def test_a_saved_batch_read_again_publishes_its_rows_and_counts_nothing() -> None:
    first = Store()
    await first.run(Batch(mixed_batch()))
    saved = dict(first.table)

    # Saved, then killed before its offsets were committed: read again.
    again = Store(first.table)
    again.table.log.clear()
    await again.run(Batch(mixed_batch()))

    assert sorted(row.event_id for row in again.rows) == ["a1", "a2", "a3", "b1", "b2", "c1"]
    assert row_count(again, "a2") == row_count(first, "a2")
    assert [kind for kind, _ in again.log if kind == "state"] == []
    assert dict(again.table) == saved


async def test_poison_is_deadlettered_once_per_batch_beside_the_counted_records() -> None:
    store = Store()
    undecodable = observation(1, "x1", "cx", T0)
    undecodable = Record(
        undecodable.topic, 0, 1, undecodable.key, b"\xff\xff not protobuf",
        undecodable.headers, undecodable.raw_headers, T0,
    )  # fmt: skip
    batch = [
        observation(0, "a1", "ca", T0 - 1000),
        undecodable,
        # Older than ca's latest event minus the grace period: too late.
        observation(2, "a0", "ca", T0 - 1000 - int(FS.grace.total_seconds() * 1000) - 1),
        observation(3, "a2", "ca", T0),
    ]

    await store.run(Batch(batch))

    [letters] = store.deadlettered
    assert [(record.offset, poison.rule) for record, poison in letters] == [
        (1, "decode"),
        (2, "late"),
    ]
    assert store.counted("ca") == ["a1", "a2"]
    assert [outgoing.event_id for outgoing in store.sent] == ["a1", "a2"]


async def test_a_batch_is_one_span_linked_to_every_producer_trace_it_holds(
    spans: InMemorySpanExporter,
) -> None:
    # Ingestion sends a batch of events in one trace: 120 records, three traces,
    # the third only at the end of the batch.
    records = []
    for trace_index, count in enumerate((60, 55, 5)):
        with tracer.start_as_current_span(f"send batch {trace_index}"):
            headers = make_headers(OBSERVED, "/test").to_kafka()
        for _ in range(count):
            offset = len(records)
            one = observation(offset, f"e{offset}", f"c{offset % 7}", T0 - 200_000 + offset * 1000)
            records.append(
                Record(one.topic, 0, offset, one.key, one.value, parse_headers(headers),
                       tuple(headers), one.timestamp_ms)
            )  # fmt: skip
    producers = {str(record.headers.traceparent).split("-")[1] for record in records}
    store = Store()
    spans.clear()

    await store.run(Batch(records))

    [processed] = [s for s in spans.get_finished_spans() if s.name == "process events.valid"]
    assert processed.attributes is not None
    assert processed.attributes["messaging.batch.message_count"] == len(records)
    assert {trace.format_trace_id(link.context.trace_id) for link in processed.links} == producers
    # The rows carry the batch's trace on (their headers name its span).
    assert set(store.send_traces) == {processed.context.trace_id}
    [save] = [s for s in spans.get_finished_spans() if s.name == "features.save"]
    assert save.parent is not None and save.parent.span_id == processed.context.span_id
