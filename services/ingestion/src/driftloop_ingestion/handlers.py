"""Ingesting a batch of raw events: validate, deduplicate, publish, remember.

This is the one handler behind both ways in (gRPC and `events.raw`); it knows
neither. It talks to an `EventIndex` (which event ids were accepted, for which
entity, and whether they were labelled) and an `EventSink` (where valid events
go), both handed in by the composition root.

The order of the steps is what makes a crash harmless: valid events are
published and acknowledged first, then recorded in the index, and only then
does the caller acknowledge its source (commit the Kafka offset, answer the
gRPC call). A crash in between can only make the same events be published
again, which downstream consumers drop by event id; it can never lose one.

Two batches in flight at once (a gRPC stream beside the Kafka loop) that share
an event id are serialised on that id, so an event is published once even when
it arrives both ways at the same moment.

A duplicate is an event the broker already holds. When the broker is replaced
by an empty one (the embedded broker restarted), `published_since_ms` moves to
that moment: an id the index saw before it is published again when a producer
replays it, since only the lost broker had it, and still names the entity of
its late label. Such a label goes out each time it is sent until its
observation is replayed; consumers drop the repeats by event id.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any, Literal, NamedTuple, Protocol

from opentelemetry import trace

from driftloop_ingestion.messages import ObservationEncoder, label_message
from driftloop_ingestion.metrics import EVENTS, REJECTIONS
from driftloop_ingestion.rules import EVENT_ID, RULE_UNKNOWN_EVENT_ID, Problem, Rejection
from driftloop_ingestion.validation import Origin, Validated, Validator, ValidObservation

tracer = trace.get_tracer("driftloop.ingestion")

Kind = Literal["observation", "label"]
OBSERVATION: Kind = "observation"
LABEL: Kind = "label"


class Incoming(NamedTuple):
    """One raw event: JSON text, or an already decoded mapping (gRPC `RawEvent`).

    `origin` names where the event was read from (e.g. a Kafka topic, partition,
    offset and timestamp); an observation without an event id gets one derived
    from it, so a replay of the same record gets the same id. Without an origin
    a random id is given.
    """

    payload: bytes | str | Mapping[str, Any]
    origin: Origin | None = None


class Accepted(NamedTuple):
    """An event that passed; `duplicate` when it was seen before and not published."""

    event_id: str
    kind: Kind
    duplicate: bool
    entity_id: str


Outcome = Accepted | Rejection


class IndexEntry(NamedTuple):
    """What the index remembers of an accepted observation."""

    event_id: str
    entity_id: str
    event_time_ms: int
    seen_at_ms: int
    labelled: bool


class EventIndex(Protocol):
    """Accepted observations by event id; survives restarts."""

    def lookup(self, event_ids: Collection[str]) -> Mapping[str, IndexEntry]:
        """The entries of those ids that are known (a missing id is unknown)."""
        ...

    def record(self, observations: Sequence[IndexEntry], labelled: Sequence[str]) -> None:
        """Store new or refreshed observations and mark ids as labelled, atomically."""
        ...


class Publication(NamedTuple):
    """An encoded `Observation` or `Label` for `events.valid`, keyed by entity,
    with its CloudEvents id."""

    value: bytes
    kind: Kind
    key: str
    event_id: str


class EventSink(Protocol):
    async def publish(self, events: Sequence[Publication]) -> None:
        """Return once every event is acknowledged; raise `PublishFailed` otherwise."""
        ...


class PublishFailed(Exception):
    """The valid events could not be published; nothing of the batch may be acknowledged."""


def label_cloudevent_id(event_id: str) -> str:
    """A label shares its observation's event id; its CloudEvents id must differ."""
    return event_id + ":label"


class Ingestor:
    """Validates, deduplicates and publishes batches of raw events."""

    def __init__(
        self,
        validator: Validator,
        index: EventIndex,
        sink: EventSink,
        *,
        dedup_window: timedelta,
        label_horizon: timedelta,
        clock: Callable[[], float] = time.time,
        published_since_ms: int = 0,
    ) -> None:
        # Index entries seen before this time were published to a broker that is
        # gone (see the module docstring); 0 while the first broker serves.
        self.published_since_ms = published_since_ms
        self._validator = validator
        self._index = index
        self._sink = sink
        self._feature_set = validator.featureset.name
        self._encoder = ObservationEncoder(validator.featureset)
        self._dedup_window_ms = int(dedup_window / timedelta(milliseconds=1))
        self._label_horizon = label_horizon
        self._label_horizon_ms = int(label_horizon / timedelta(milliseconds=1))
        self._clock = clock
        # Event ids of batches between lookup and record, with a future each
        # batch completes when it is done; another batch with one of those ids waits.
        self._in_flight: dict[str, asyncio.Future[None]] = {}

    @property
    def validator(self) -> Validator:
        return self._validator

    async def ingest(self, batch: Sequence[Incoming], *, source: str = "api") -> list[Outcome]:
        """One outcome per incoming event, in order; valid new events are
        published and indexed before this returns."""
        validate = self._validator.validate
        validate_json = self._validator.validate_json
        checked: list[Validated] = [
            validate_json(item.payload, origin=item.origin)
            if isinstance(item.payload, bytes | str)
            else validate(item.payload, origin=item.origin)
            for item in batch
        ]
        ids = {event.event_id for event in checked if not isinstance(event, Rejection)}
        with tracer.start_as_current_span(
            "ingest", attributes={"ingestion.source": source, "ingestion.batch_size": len(batch)}
        ) as span:
            done = await self._claim(ids)
            try:
                outcomes = await self._resolve(checked, ids)
            finally:
                self._release(ids, done)
            published, duplicates, rejected = _tally(outcomes, source)
            span.set_attributes(
                {
                    "ingestion.published": published,
                    "ingestion.duplicates": duplicates,
                    "ingestion.rejected": rejected,
                }
            )
        return outcomes

    async def _claim(self, ids: set[str]) -> asyncio.Future[None]:
        """Wait until no other batch holds one of `ids`, then hold them all."""
        while self._in_flight:
            holders = {self._in_flight[i] for i in ids if i in self._in_flight}
            if not holders:
                break
            await asyncio.wait(holders)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for event_id in ids:
            self._in_flight[event_id] = done
        return done

    def _release(self, ids: Iterable[str], done: asyncio.Future[None]) -> None:
        for event_id in ids:
            if self._in_flight.get(event_id) is done:
                del self._in_flight[event_id]
        done.set_result(None)

    async def _resolve(self, checked: list[Validated], ids: set[str]) -> list[Outcome]:
        now_ms = int(self._clock() * 1000)
        on_broker_after = self.published_since_ms
        dedup_after = max(now_ms - self._dedup_window_ms, on_broker_after)
        join_after = now_ms - self._label_horizon_ms
        known = self._index.lookup(ids) if ids else {}
        accepted: dict[str, IndexEntry] = {}  # observations accepted in this batch
        labelled: set[str] = set()  # earlier observations labelled in this batch
        publications: list[Publication] = []
        outcomes: list[Outcome] = []
        feature_set = self._feature_set
        encode = self._encoder.encode
        for event in checked:
            if isinstance(event, Rejection):
                outcomes.append(event)
                continue
            event_id = event.event_id
            if isinstance(event, ValidObservation):
                seen = known.get(event_id)
                if event_id in accepted or (seen is not None and seen.seen_at_ms >= dedup_after):
                    entity = accepted.get(event_id, seen)
                    assert entity is not None
                    outcomes.append(Accepted(event_id, OBSERVATION, True, entity.entity_id))
                    continue
                accepted[event_id] = IndexEntry(
                    event_id,
                    event.entity_id,
                    event.event_time_ms,
                    now_ms,
                    event.label is not None,
                )
                publications.append(
                    Publication(
                        encode(event, ingested_at_ms=now_ms),
                        OBSERVATION,
                        event.entity_id,
                        event_id,
                    )
                )
                outcomes.append(Accepted(event_id, OBSERVATION, False, event.entity_id))
                continue
            # A late label: its event id must name an observation seen before.
            entry = accepted.get(event_id) or known.get(event_id)
            if entry is None or entry.seen_at_ms < join_after:
                outcomes.append(self._unknown_event(event_id))
                continue
            if (entry.labelled and entry.seen_at_ms >= on_broker_after) or event_id in labelled:
                outcomes.append(Accepted(event_id, LABEL, True, entry.entity_id))
                continue
            if event_id in accepted:
                accepted[event_id] = entry._replace(labelled=True)
            else:
                labelled.add(event_id)
            publications.append(
                Publication(
                    label_message(
                        event_id=event_id,
                        entity_id=entry.entity_id,
                        label=event.label,
                        event_time_ms=entry.event_time_ms,
                        feature_set=feature_set,
                        ingested_at_ms=now_ms,
                    ).SerializeToString(),
                    LABEL,
                    entry.entity_id,
                    label_cloudevent_id(event_id),
                )
            )
            outcomes.append(Accepted(event_id, LABEL, False, entry.entity_id))
        if publications:
            await self._sink.publish(publications)
            self._index.record(list(accepted.values()), sorted(labelled))
        return outcomes

    def _unknown_event(self, event_id: str) -> Rejection:
        hours = self._label_horizon / timedelta(hours=1)
        return Rejection(
            (
                Problem(
                    EVENT_ID,
                    RULE_UNKNOWN_EVENT_ID,
                    f"{EVENT_ID}: no observation {event_id!r} was accepted in the last "
                    f"{hours:g}h, so this late label has nothing to label",
                ),
            ),
            event_id,
        )


def _tally(outcomes: Sequence[Outcome], source: str) -> tuple[int, int, int]:
    published = duplicates = rejected = 0
    rules: dict[str, int] = {}
    for outcome in outcomes:
        if isinstance(outcome, Rejection):
            rejected += 1
            rules[outcome.rule] = rules.get(outcome.rule, 0) + 1
        elif outcome.duplicate:
            duplicates += 1
        else:
            published += 1
    if published:
        EVENTS.labels(source, "published").inc(published)
    if duplicates:
        EVENTS.labels(source, "duplicate").inc(duplicates)
    if rejected:
        EVENTS.labels(source, "rejected").inc(rejected)
        for rule, count in rules.items():
            REJECTIONS.labels(source, rule).inc(count)
    return published, duplicates, rejected
