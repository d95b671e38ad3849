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

Labels and observations arrive in any order: a label producer rarely knows the
entity, so its records land on other partitions than their observations and
can overtake them. A label for an id the index has never seen is held (in the
index, so it survives a restart) and published right after its observation
when that is accepted, in the same batch or a later one, either way in. At
most `max_held_labels` wait at once; one that waited `label_wait` in vain is
dead-lettered by `expire_held` with rule `label_unmatched`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta

from opentelemetry import trace

from driftloop_ingestion.messages import (
    ObservationEncoder,
    label_message,
    unmatched_label_deadletter,
)
from driftloop_ingestion.metrics import EVENTS, HELD_LABELS, LABELS_EXPIRED, REJECTIONS
from driftloop_ingestion.ports import (
    LABEL,
    OBSERVATION,
    Accepted,
    EventIndex,
    EventSink,
    HeldLabel,
    Incoming,
    IndexEntry,
    Outcome,
    Publication,
    label_cloudevent_id,
)
from driftloop_ingestion.rules import (
    EVENT_ID,
    RULE_HELD_LABELS_FULL,
    RULE_LABEL_UNMATCHED,
    RULE_UNKNOWN_EVENT_ID,
    Problem,
    Rejection,
)
from driftloop_ingestion.validation import Validated, Validator, ValidObservation

tracer = trace.get_tracer("driftloop.ingestion")


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
        label_wait: timedelta = timedelta(hours=24),
        max_held_labels: int = 1_000_000,
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
        self._label_wait = label_wait
        self._label_wait_ms = int(label_wait / timedelta(milliseconds=1))
        self._max_held = max_held_labels
        self._clock = clock
        HELD_LABELS.set(index.held_count())
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
                outcomes = await self._resolve(batch, checked, ids)
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

    async def _resolve(
        self, batch: Sequence[Incoming], checked: list[Validated], ids: set[str]
    ) -> list[Outcome]:
        now_ms = int(self._clock() * 1000)
        on_broker_after = self.published_since_ms
        dedup_after = max(now_ms - self._dedup_window_ms, on_broker_after)
        join_after = now_ms - self._label_horizon_ms
        index = self._index
        known = index.lookup(ids) if ids else {}
        held_count = index.held_count()
        held = index.held(ids) if ids and held_count else {}
        accepted: dict[str, IndexEntry] = {}  # observations accepted in this batch
        labelled: set[str] = set()  # earlier observations labelled in this batch
        # Labels held by this batch, with their position in `outcomes`.
        holding: dict[str, tuple[int, HeldLabel]] = {}
        release: list[str] = []  # labels held before, released by this batch
        publications: list[Publication] = []
        outcomes: list[Outcome] = []
        for item, event in zip(batch, checked, strict=True):
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
                entry = IndexEntry(
                    event_id, event.entity_id, event.event_time_ms, now_ms, event.label is not None
                )
                publications.append(
                    Publication(
                        self._encoder.encode(event, ingested_at_ms=now_ms),
                        OBSERVATION,
                        event.entity_id,
                        event_id,
                    )
                )
                outcomes.append(Accepted(event_id, OBSERVATION, False, event.entity_id))
                waiting = holding.pop(event_id, None)
                if waiting is None and event_id in held:
                    release.append(event_id)
                    waiting = (-1, held[event_id])
                if waiting is not None:
                    position, label = waiting
                    # An observation that carries its own label makes the held one a repeat.
                    if not entry.labelled:
                        entry = entry._replace(labelled=True)
                        publications.append(self._label(event_id, label.label, entry, now_ms))
                    if position >= 0:
                        outcomes[position] = Accepted(
                            event_id, LABEL, event.label is not None, event.entity_id
                        )
                accepted[event_id] = entry
                continue
            # A late label: its event id should name an observation seen before.
            joined = accepted.get(event_id) or known.get(event_id)
            if joined is None:
                if event_id in held or event_id in holding:
                    outcomes.append(Accepted(event_id, LABEL, True, "", held=True))
                elif held_count - len(release) + len(holding) >= self._max_held:
                    outcomes.append(self._held_full(event_id))
                else:
                    early = HeldLabel(event_id, event.label, now_ms, _raw(item), item.origin)
                    holding[event_id] = (len(outcomes), early)
                    outcomes.append(Accepted(event_id, LABEL, False, "", held=True))
                continue
            if joined.seen_at_ms < join_after:
                outcomes.append(self._unknown_event(event_id))
                continue
            if (joined.labelled and joined.seen_at_ms >= on_broker_after) or event_id in labelled:
                outcomes.append(Accepted(event_id, LABEL, True, joined.entity_id))
                continue
            if event_id in accepted:
                accepted[event_id] = joined._replace(labelled=True)
            else:
                labelled.add(event_id)
            publications.append(self._label(event_id, event.label, joined, now_ms))
            outcomes.append(Accepted(event_id, LABEL, False, joined.entity_id))
        if publications:
            await self._sink.publish(publications)
        if publications or holding or release:
            hold = [label for _, label in holding.values()]
            index.record(list(accepted.values()), sorted(labelled), hold=hold, release=release)
            if holding or release:
                HELD_LABELS.set(held_count + len(holding) - len(release))
        return outcomes

    def _label(self, event_id: str, label: int, entry: IndexEntry, now_ms: int) -> Publication:
        """A `Label` for `events.valid`, keyed by its observation's entity."""
        message = label_message(
            event_id=event_id,
            entity_id=entry.entity_id,
            label=label,
            event_time_ms=entry.event_time_ms,
            feature_set=self._feature_set,
            ingested_at_ms=now_ms,
        )
        return Publication(
            message.SerializeToString(), LABEL, entry.entity_id, label_cloudevent_id(event_id)
        )

    async def expire_held(self, limit: int = 1000) -> int:
        """Dead-letter up to `limit` labels that waited `label_wait` for their
        observation in vain; return how many.

        The ids are claimed like a batch's, so a label is either released by an
        observation arriving at this moment or dead-lettered, never both.
        """
        now_ms = int(self._clock() * 1000)
        expired = self._index.held_before(now_ms - self._label_wait_ms, limit)
        if not expired:
            return 0
        ids = {label.event_id for label in expired}
        done = await self._claim(ids)
        try:
            still_held = self._index.held(ids)
            letters = [label for label in expired if label.event_id in still_held]
            if letters:
                await self._sink.deadletter([self._unmatched(label, now_ms) for label in letters])
                self._index.record([], [], release=[label.event_id for label in letters])
        finally:
            self._release(ids, done)
        LABELS_EXPIRED.inc(len(letters))
        HELD_LABELS.set(self._index.held_count())
        return len(letters)

    def _unmatched(self, label: HeldLabel, now_ms: int) -> bytes:
        wait = _duration(self._label_wait)
        letter = unmatched_label_deadletter(
            event_id=label.event_id,
            payload=label.payload,
            origin=label.origin,
            reason=f"{EVENT_ID}: no observation {label.event_id!r} arrived within {wait}, "
            "so this label, held since it came first, has nothing to label",
            rule=RULE_LABEL_UNMATCHED,
            failed_at_ms=now_ms,
        )
        return letter.SerializeToString()

    def _held_full(self, event_id: str) -> Rejection:
        return _label_rejection(
            event_id,
            RULE_HELD_LABELS_FULL,
            f"no observation {event_id!r} has arrived yet and {self._max_held} labels "
            "already wait for theirs, the most DRIFTLOOP_INGESTION_MAX_HELD_LABELS allows",
        )

    def _unknown_event(self, event_id: str) -> Rejection:
        return _label_rejection(
            event_id,
            RULE_UNKNOWN_EVENT_ID,
            f"observation {event_id!r} was accepted more than "
            f"{_duration(self._label_horizon)} ago, so this late label can no longer label it",
        )


def _label_rejection(event_id: str, rule: str, why: str) -> Rejection:
    return Rejection((Problem(EVENT_ID, rule, f"{EVENT_ID}: {why}"),), event_id)


def _duration(span: timedelta) -> str:
    """`24h`, `90m` or `5s`: the way durations are configured."""
    seconds = span / timedelta(seconds=1)
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def _raw(item: Incoming) -> bytes:
    """An event's payload as a dead letter keeps it: JSON text, byte for byte."""
    payload = item.payload
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, str):
        return payload.encode()
    return json.dumps(payload, separators=(",", ":")).encode()


def _tally(outcomes: Sequence[Outcome], source: str) -> tuple[int, int, int]:
    published = duplicates = rejected = held = 0
    rules: dict[str, int] = {}
    for outcome in outcomes:
        if isinstance(outcome, Rejection):
            rejected += 1
            rules[outcome.rule] = rules.get(outcome.rule, 0) + 1
        elif outcome.duplicate:
            duplicates += 1
        elif outcome.held:
            held += 1
        else:
            published += 1
    if published:
        EVENTS.labels(source, "published").inc(published)
    if held:
        EVENTS.labels(source, "held").inc(held)
    if duplicates:
        EVENTS.labels(source, "duplicate").inc(duplicates)
    if rejected:
        EVENTS.labels(source, "rejected").inc(rejected)
        for rule, count in rules.items():
            REJECTIONS.labels(source, rule).inc(count)
    return published, duplicates, rejected
