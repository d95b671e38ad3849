"""The ingest handler with fakes: dedup, late labels, and the publish-then-index order."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from driftloop.v1 import events_pb2
from driftloop_core.featureset import default_featureset_path, load_featureset
from driftloop_ingestion.adapters.event_index import SqliteEventIndex
from driftloop_ingestion.handlers import Ingestor
from driftloop_ingestion.ports import (
    LABEL,
    OBSERVATION,
    Accepted,
    Incoming,
    IndexEntry,
    Publication,
    PublishFailed,
)
from driftloop_ingestion.validation import Rejection, Validator

START_MS = 1_763_800_000_000


class Clock:
    def __init__(self) -> None:
        self.ms = START_MS

    def __call__(self) -> float:
        return self.ms / 1000


class Sink:
    def __init__(self) -> None:
        self.batches: list[list[Publication]] = []
        self.letters: list[events_pb2.DeadLetter] = []
        self.fail = False
        self.gate: asyncio.Event | None = None

    async def publish(self, events: Sequence[Publication]) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise PublishFailed("broker down")
        self.batches.append(list(events))

    async def deadletter(self, letters: Sequence[bytes]) -> None:
        if self.fail:
            raise PublishFailed("broker down")
        self.letters.extend(events_pb2.DeadLetter.FromString(letter) for letter in letters)

    @property
    def published(self) -> list[Publication]:
        return [p for batch in self.batches for p in batch]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def index(tmp_path: Path, clock: Clock) -> SqliteEventIndex:
    return SqliteEventIndex(tmp_path / "events.db", retention=timedelta(hours=3), clock=clock)


@pytest.fixture
def sink() -> Sink:
    return Sink()


def make_ingestor(clock: Clock, index: SqliteEventIndex, sink: Sink, **options: Any) -> Ingestor:
    return Ingestor(
        Validator(load_featureset(default_featureset_path()), clock=clock),
        index,
        sink,
        dedup_window=timedelta(hours=1),
        label_horizon=timedelta(hours=3),
        clock=clock,
        **options,
    )


@pytest.fixture
def ingestor(clock: Clock, index: SqliteEventIndex, sink: Sink) -> Ingestor:
    return make_ingestor(clock, index, sink)


def obs(event_id: str, entity: str = "c1", **extra: object) -> Incoming:
    event = {
        "event_id": event_id,
        "customer_id": entity,
        "ts": START_MS - 60_000,
        "amount": 1.0,
        "channel": "pos",
        "hour": 1,
        **extra,
    }
    return Incoming(orjson.dumps(event))


def label(event_id: str, value: int = 1) -> Incoming:
    return Incoming(orjson.dumps({"event_id": event_id, "is_fraud": value}))


async def test_valid_events_are_published_keyed_by_entity_and_indexed(
    ingestor: Ingestor, sink: Sink, index: SqliteEventIndex
) -> None:
    outcomes = await ingestor.ingest([obs("e1", "c1"), obs("bad", amount=-1), obs("e2", "c2")])
    assert outcomes[0] == Accepted("e1", OBSERVATION, False, "c1")
    assert isinstance(outcomes[1], Rejection) and outcomes[1].rule == "min"
    assert outcomes[2] == Accepted("e2", OBSERVATION, False, "c2")
    assert [(p.kind, p.key, p.event_id) for p in sink.published] == [
        (OBSERVATION, "c1", "e1"),
        (OBSERVATION, "c2", "e2"),
    ]
    message = events_pb2.Observation.FromString(sink.published[0].value)
    assert message.event_id == "e1" and message.entity_id == "c1"
    assert message.values["amount"].float_value == 1.0
    assert message.values["channel"].string_value == "pos"
    assert message.values["hour"].int_value == 1
    assert message.event_time.ToMilliseconds() == START_MS - 60_000
    assert message.ingested_at.ToMilliseconds() == START_MS
    assert message.feature_set == "payments" and not message.HasField("label")
    assert set(index.lookup(["e1", "e2", "e3"])) == {"e1", "e2"} and index.count() == 2


async def test_duplicates_within_the_window_are_acknowledged_not_republished(
    ingestor: Ingestor, sink: Sink, clock: Clock
) -> None:
    first = await ingestor.ingest([obs("e1"), obs("e1")])
    assert [o.duplicate for o in first if isinstance(o, Accepted)] == [False, True]
    clock.ms += 59 * 60_000
    again = await ingestor.ingest([obs("e1")])
    assert again == [Accepted("e1", OBSERVATION, True, "c1")]
    assert len(sink.published) == 1
    clock.ms += 2 * 60_000  # the window has passed: a new event
    later = await ingestor.ingest([obs("e1")])
    assert later == [Accepted("e1", OBSERVATION, False, "c1")]
    assert len(sink.published) == 2


async def test_late_label_takes_its_observations_entity_and_time(
    ingestor: Ingestor, sink: Sink, clock: Clock
) -> None:
    await ingestor.ingest([obs("e1", "c9")])
    clock.ms += 60_000
    outcomes = await ingestor.ingest([label("e1", 0)])
    assert outcomes == [Accepted("e1", LABEL, False, "c9")]
    published = sink.published[-1]
    assert (published.kind, published.key, published.event_id) == (LABEL, "c9", "e1:label")
    message = events_pb2.Label.FromString(published.value)
    assert (message.event_id, message.entity_id, message.label) == ("e1", "c9", 0)
    assert message.event_time.ToMilliseconds() == START_MS - 60_000
    assert message.ingested_at.ToMilliseconds() == START_MS + 60_000
    assert message.feature_set == "payments"
    # The same label again is a duplicate.
    assert await ingestor.ingest([label("e1", 0)]) == [Accepted("e1", LABEL, True, "c9")]
    assert len(sink.published) == 2


async def test_label_in_the_same_batch_after_its_observation(
    ingestor: Ingestor, sink: Sink, index: SqliteEventIndex
) -> None:
    outcomes = await ingestor.ingest([obs("e1", "c3"), label("e1"), label("e1")])
    assert outcomes == [
        Accepted("e1", OBSERVATION, False, "c3"),
        Accepted("e1", LABEL, False, "c3"),
        Accepted("e1", LABEL, True, "c3"),
    ]
    assert [p.kind for p in sink.published] == [OBSERVATION, LABEL]
    assert index.lookup(["e1"])["e1"].labelled


async def test_observation_carrying_its_label_makes_a_late_label_a_duplicate(
    ingestor: Ingestor, sink: Sink
) -> None:
    await ingestor.ingest([obs("e1", is_fraud=1)])
    assert events_pb2.Observation.FromString(sink.published[0].value).label == 1
    assert await ingestor.ingest([label("e1")]) == [Accepted("e1", LABEL, True, "c1")]


async def test_label_for_a_too_old_observation_is_rejected(
    ingestor: Ingestor, clock: Clock
) -> None:
    await ingestor.ingest([obs("e1")])
    clock.ms += 3 * 3_600_000 + 1
    [too_old] = await ingestor.ingest([label("e1")])
    assert isinstance(too_old, Rejection)
    assert (too_old.field, too_old.rule, too_old.event_id) == ("event_id", "unknown_event_id", "e1")
    assert "event_id: observation 'e1' was accepted more than 3h ago" in too_old.reason


def kinds(sink: Sink) -> list[tuple[str, str]]:
    return [(p.kind, p.event_id) for p in sink.published]


async def test_label_before_its_observation_is_held_then_flows_right_after_it(
    ingestor: Ingestor, sink: Sink, index: SqliteEventIndex
) -> None:
    # Same batch: the label first, then a repeat of it, then its observation.
    outcomes = await ingestor.ingest([label("a"), label("a"), obs("a", "c9"), obs("x")])
    assert outcomes == [
        Accepted("a", LABEL, False, "c9"),
        Accepted("a", LABEL, True, "", held=True),
        Accepted("a", OBSERVATION, False, "c9"),
        Accepted("x", OBSERVATION, False, "c1"),
    ]
    assert kinds(sink) == [(OBSERVATION, "a"), (LABEL, "a:label"), (OBSERVATION, "x")]
    # A later batch: held, acknowledged again as a duplicate, then released.
    assert await ingestor.ingest([label("b", 0)]) == [Accepted("b", LABEL, False, "", held=True)]
    assert await ingestor.ingest([label("b", 0)]) == [Accepted("b", LABEL, True, "", held=True)]
    assert index.held_count() == 1 and len(sink.published) == 3
    await ingestor.ingest([obs("b", "c8")])
    assert kinds(sink)[3:] == [(OBSERVATION, "b"), (LABEL, "b:label")]
    released = events_pb2.Label.FromString(sink.published[4].value)
    assert (released.entity_id, released.label, sink.published[4].key) == ("c8", 0, "c8")
    assert index.held_count() == 0
    # Once released the label is an ordinary duplicate.
    assert await ingestor.ingest([label("b", 0)]) == [Accepted("b", LABEL, True, "c8")]
    assert len(sink.published) == 5


async def test_held_label_of_an_observation_carrying_the_same_label_is_a_repeat(
    ingestor: Ingestor, sink: Sink, index: SqliteEventIndex
) -> None:
    await ingestor.ingest([label("a", 0)])
    await ingestor.ingest([obs("a", is_fraud=0)])
    assert kinds(sink) == [(OBSERVATION, "a")] and index.held_count() == 0
    assert sink.letters == []


async def test_a_held_label_its_observation_contradicts_is_a_visible_conflict(
    ingestor: Ingestor, sink: Sink, index: SqliteEventIndex
) -> None:
    """The observation's own label stands; the held label that disagrees is not
    dropped quietly: dead-lettered (held earlier) or refused (same batch)."""
    raw = Incoming(b'{"event_id": "a", "is_fraud": 1}', ("t.raw", 0, 7, START_MS))
    await ingestor.ingest([raw])
    await ingestor.ingest([obs("a", is_fraud=0)])
    assert kinds(sink) == [(OBSERVATION, "a")] and index.held_count() == 0
    [letter] = sink.letters
    assert (letter.rule, letter.field, letter.event_id) == ("conflict", "event_id", "a")
    assert "the label 1 that waited for observation 'a' disagrees with the label 0" in letter.reason
    assert '"correction": true' in letter.reason
    assert (letter.payload, letter.source_offset) == (raw.payload, 7)

    same_batch = await ingestor.ingest([label("b", 1), obs("b", is_fraud=0)])
    assert isinstance(same_batch[0], Rejection) and same_batch[0].rule == "conflict"
    assert same_batch[1] == Accepted("b", OBSERVATION, False, "c1")
    assert index.lookup(["b"])["b"].label == 0 and index.held_count() == 0

    # Two different labels waiting for one observation: the second is refused.
    twice = await ingestor.ingest([label("c", 1), label("c", 0), label("c", 1)])
    assert isinstance(twice[1], Rejection) and twice[1].rule == "conflict"
    assert "the label 1 already waits for observation 'c'" in twice[1].reason
    assert twice[2] == Accepted("c", LABEL, True, "", held=True)
    assert await ingestor.ingest([label("c", 0)]) == [twice[1]]


async def test_held_labels_are_bounded(clock: Clock, index: SqliteEventIndex, sink: Sink) -> None:
    ingestor = make_ingestor(clock, index, sink, max_held_labels=2)
    outcomes = await ingestor.ingest([label("a"), label("b"), label("c")])
    assert [getattr(o, "held", None) for o in outcomes[:2]] == [True, True]
    full = outcomes[2]
    assert isinstance(full, Rejection) and (full.rule, full.event_id) == ("held_labels_full", "c")
    assert "2 labels already wait" in full.reason
    await ingestor.ingest([obs("a")])  # releases one: room for another
    assert await ingestor.ingest([label("c")]) == [Accepted("c", LABEL, False, "", held=True)]


async def test_a_held_label_whose_observation_never_comes_is_deadlettered_after_the_wait(
    clock: Clock, index: SqliteEventIndex, sink: Sink
) -> None:
    ingestor = make_ingestor(clock, index, sink)
    raw = Incoming(b'{"event_id": "late", "is_fraud": 1}', ("t.raw", 1, 42, START_MS))
    await ingestor.ingest([raw, label("soon")])
    clock.ms += 24 * 3_600_000
    assert await ingestor.expire_held() == 0  # exactly the wait: still held
    clock.ms += 1
    await ingestor.ingest([obs("soon")])
    assert await ingestor.expire_held() == 1
    [letter] = sink.letters
    assert (letter.rule, letter.field, letter.event_id) == ("label_unmatched", "event_id", "late")
    assert "no observation 'late' arrived within 24h" in letter.reason
    assert letter.payload == raw.payload
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == ("t.raw", 1, 42)
    assert index.held_count() == 0 and kinds(sink)[-1] == (LABEL, "soon:label")
    # Its observation arriving after all flows alone; the label was dead-lettered.
    await ingestor.ingest([obs("late")])
    assert kinds(sink)[-1] == (OBSERVATION, "late")


async def test_held_labels_survive_a_restart(
    tmp_path: Path, clock: Clock, ingestor: Ingestor, index: SqliteEventIndex, sink: Sink
) -> None:
    await ingestor.ingest([label("a")])
    index.close()
    reopened = SqliteEventIndex(tmp_path / "events.db", retention=timedelta(hours=3), clock=clock)
    again = make_ingestor(clock, reopened, sink)
    assert reopened.held_count() == 1
    await again.ingest([obs("a")])
    assert kinds(sink) == [(OBSERVATION, "a"), (LABEL, "a:label")]


async def test_failed_publish_records_nothing_so_a_retry_publishes(
    ingestor: Ingestor, sink: Sink, index: SqliteEventIndex
) -> None:
    sink.fail = True
    with pytest.raises(PublishFailed):
        await ingestor.ingest([obs("e1")])
    assert index.count() == 0
    sink.fail = False
    assert await ingestor.ingest([obs("e1")]) == [Accepted("e1", OBSERVATION, False, "c1")]
    assert len(sink.published) == 1


async def test_concurrent_batches_sharing_an_id_publish_it_once(
    ingestor: Ingestor, sink: Sink
) -> None:
    sink.gate = asyncio.Event()
    first = asyncio.create_task(ingestor.ingest([obs("e1"), obs("e2")]))
    second = asyncio.create_task(ingestor.ingest([obs("e2"), obs("e3")]))
    await asyncio.sleep(0.01)
    sink.gate.set()
    one, two = await asyncio.gather(first, second)
    assert [o.duplicate for o in one if isinstance(o, Accepted)] == [False, False]
    assert [o.duplicate for o in two if isinstance(o, Accepted)] == [True, False]
    assert sorted(p.event_id for p in sink.published) == ["e1", "e2", "e3"]


async def test_after_a_new_broker_a_replayed_event_is_published_again_once(
    ingestor: Ingestor, sink: Sink, clock: Clock
) -> None:
    """The embedded broker restarted empty: what the index saw before is no longer
    on the broker, so a replay publishes it (and its late label) again, once;
    the index still joins a late label to its observation's entity."""
    await ingestor.ingest([obs("e1", "c1"), obs("e2", "c2"), obs("e3", "c3")])
    await ingestor.ingest([label("e1")])
    clock.ms += 60_000
    ingestor.published_since_ms = clock.ms
    clock.ms += 1_000

    replayed = await ingestor.ingest([obs("e1", "c1"), label("e1"), obs("e2", "c2")])
    assert replayed == [
        Accepted("e1", OBSERVATION, False, "c1"),
        Accepted("e1", LABEL, False, "c1"),
        Accepted("e2", OBSERVATION, False, "c2"),
    ]
    # On the new broker now: the same again is a duplicate.
    again = await ingestor.ingest([obs("e1", "c1"), label("e1"), obs("e2", "c2")])
    assert all(isinstance(o, Accepted) and o.duplicate for o in again), again
    # e3 was not replayed: a late label still finds its entity, and goes out.
    assert await ingestor.ingest([label("e3")]) == [Accepted("e3", LABEL, False, "c3")]
    assert [(p.kind, p.event_id) for p in sink.published[4:]] == [
        (OBSERVATION, "e1"),
        (LABEL, "e1:label"),
        (OBSERVATION, "e2"),
        (LABEL, "e3:label"),
    ]


async def test_raw_mappings_are_validated_like_json(ingestor: Ingestor) -> None:
    outcomes = await ingestor.ingest(
        [
            Incoming(
                {"customer_id": "c1", "ts": START_MS, "amount": 2, "channel": "atm", "hour": 0}
            ),
            Incoming({"customer_id": "c1", "ts": START_MS, "amount": 2, "channel": "atm"}),
        ]
    )
    assert isinstance(outcomes[0], Accepted) and len(outcomes[0].event_id) == 32
    assert isinstance(outcomes[1], Rejection) and outcomes[1].field == "hour"


def test_sqlite_index_survives_reopening_and_prunes_old_rows(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "ingestion" / "events.db"
    index = SqliteEventIndex(path, retention=timedelta(hours=2), clock=clock)
    index.record(
        [
            IndexEntry("old", "c1", START_MS - 1, START_MS - 3 * 3_600_000, False),
            IndexEntry("new", "c2", START_MS - 2, START_MS, False),
        ],
        {},
    )
    index.record([], {"new": 0})
    index.close()

    reopened = SqliteEventIndex(path, retention=timedelta(hours=2), clock=clock)
    assert reopened.lookup(["old", "new", "missing"]) == {
        "old": IndexEntry("old", "c1", START_MS - 1, START_MS - 3 * 3_600_000, False),
        "new": IndexEntry("new", "c2", START_MS - 2, START_MS, True, None, 0),
    }
    assert reopened.prune() == 1
    assert set(reopened.lookup(["old", "new"])) == {"new"}
    # Upserting refreshes a row; lookups of many ids go in chunks.
    reopened.record([IndexEntry("new", "c2", START_MS - 2, START_MS + 5, False)], {})
    many = [IndexEntry(f"e{i}", "c", START_MS, START_MS, False) for i in range(2500)]
    reopened.record(many, {})
    found = reopened.lookup([f"e{i}" for i in range(2500)] + ["new"])
    assert len(found) == 2501 and found["new"].seen_at_ms == START_MS + 5
    reopened.close()


def test_sqlite_index_names_its_broker_and_when_it_changed(tmp_path: Path) -> None:
    path = tmp_path / "ingestion" / "events.db"
    index = SqliteEventIndex(path, retention=timedelta(hours=2))
    # The first broker holds everything indexed so far; so does a broker with no id.
    assert index.use_broker("driftloop-a", START_MS) == 0
    assert index.use_broker("driftloop-a", START_MS + 1) == 0
    assert index.use_broker("", START_MS + 2) == 0
    # Another broker holds nothing indexed before it was met, across reopening too.
    assert index.use_broker("driftloop-b", START_MS + 3) == START_MS + 3
    index.close()
    reopened = SqliteEventIndex(path, retention=timedelta(hours=2))
    assert reopened.use_broker("driftloop-b", START_MS + 4) == START_MS + 3
    assert reopened.use_broker("driftloop-c", START_MS + 5) == START_MS + 5
    reopened.close()


async def test_an_id_resent_with_other_content_is_a_conflict_not_a_duplicate(
    ingestor: Ingestor, sink: Sink, index: SqliteEventIndex
) -> None:
    await ingestor.ingest([obs("e1", "c1", is_fraud=1)])
    # The same event again, even spelled otherwise (12 for 12.0), is a duplicate.
    again = await ingestor.ingest([obs("e1", "c1", is_fraud=1), obs("e1", amount=1, is_fraud=1)])
    assert again == [Accepted("e1", OBSERVATION, True, "c1")] * 2
    conflicts = await ingestor.ingest(
        [
            obs("e1", "c2", is_fraud=1),
            obs("e1", "c1", is_fraud=1, ts=START_MS - 1),
            obs("e1", "c1", is_fraud=1, amount=2.0),
            obs("e1", "c1", is_fraud=0),
            obs("e1", "c1"),
        ]
    )
    assert [(o.field, o.rule, o.event_id) for o in conflicts if isinstance(o, Rejection)] == [
        ("event_id", "conflict", "e1")
    ] * 5
    reasons = [o.reason for o in conflicts if isinstance(o, Rejection)]
    assert (
        "'e1' was accepted before with other content (customer_id 'c1' then, 'c2' now)"
        in (reasons[0])
    )
    assert f"ts {START_MS - 60_000} then, {START_MS - 1} now" in reasons[1]
    assert "(other field values or label)" in reasons[2]
    # Only the first was published; within one batch the first copy wins alike.
    assert kinds(sink) == [(OBSERVATION, "e1")]
    [first, second] = await ingestor.ingest([obs("e2", amount=1.0), obs("e2", amount=3.0)])
    assert isinstance(first, Accepted) and isinstance(second, Rejection)
    assert second.rule == "conflict"


async def test_an_index_row_from_before_digests_makes_a_resend_a_duplicate(
    ingestor: Ingestor, index: SqliteEventIndex
) -> None:
    index.record([IndexEntry("old", "c1", START_MS - 60_000, START_MS, False)], {})
    outcomes = await ingestor.ingest([obs("old", "c1", amount=9.0)])
    assert outcomes == [Accepted("old", OBSERVATION, True, "c1")]


async def test_another_label_is_a_conflict_and_a_correction_replaces_it(
    ingestor: Ingestor, sink: Sink, index: SqliteEventIndex, clock: Clock
) -> None:
    await ingestor.ingest([obs("e1", "c9"), label("e1", 1), obs("e2", "c8", is_fraud=1)])
    clock.ms += 1000
    outcomes = await ingestor.ingest(
        [
            label("e1", 1),  # the same label: a duplicate
            label("e1", 0),  # another one: a conflict
            Incoming(b'{"event_id": "e1", "is_fraud": 0, "correction": true}'),
            Incoming(b'{"event_id": "e1", "is_fraud": 0, "correction": true}'),
            label("e2", 0),  # against the observation's own label: a conflict too
            Incoming(b'{"event_id": "e2", "is_fraud": 0, "correction": true}'),
            Incoming(b'{"event_id": "nobody", "is_fraud": 0, "correction": true}'),
        ]
    )
    assert outcomes[0] == Accepted("e1", LABEL, True, "c9")
    assert isinstance(outcomes[1], Rejection)
    assert (outcomes[1].field, outcomes[1].rule) == ("event_id", "conflict")
    assert "observation 'e1' is labelled 1 already" in outcomes[1].reason
    assert '{"event_id": "e1", "is_fraud": 0, "correction": true}' in outcomes[1].reason
    assert outcomes[2] == Accepted("e1", LABEL, False, "c9")
    assert outcomes[3] == Accepted("e1", LABEL, True, "c9")  # nothing left to change
    assert isinstance(outcomes[4], Rejection) and outcomes[4].rule == "conflict"
    assert outcomes[5] == Accepted("e2", LABEL, False, "c8")
    nobody = outcomes[6]
    assert isinstance(nobody, Rejection) and nobody.rule == "unknown_event_id"
    assert "there is no label to correct" in nobody.reason and index.held_count() == 0

    corrections = sink.published[3:]
    assert [(p.kind, p.key, p.correction) for p in corrections] == [
        (LABEL, "c9", True),
        (LABEL, "c8", True),
    ]
    assert corrections[0].event_id == f"e1:correction:{clock.ms}.2"
    assert corrections[1].event_id == f"e2:correction:{clock.ms}.5"
    message = events_pb2.Label.FromString(corrections[0].value)
    assert (message.event_id, message.entity_id, message.label) == ("e1", "c9", 0)
    assert message.ingested_at.ToMilliseconds() == clock.ms
    assert {k: v.label for k, v in index.lookup(["e1", "e2"]).items()} == {"e1": 0, "e2": 0}
    # Back again is a correction too; a plain label of the value now is a duplicate.
    back = Incoming(b'{"event_id": "e1", "is_fraud": 1, "correction": true}')
    assert await ingestor.ingest([back, label("e1", 1)]) == [
        Accepted("e1", LABEL, False, "c9"),
        Accepted("e1", LABEL, True, "c9"),
    ]
    assert len(sink.published) == 6
