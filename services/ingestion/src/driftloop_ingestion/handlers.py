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

An event id names one event. The same id again with the same content is a
duplicate (acknowledged, not published); with other content (entity, time,
values, its own label: the index keeps a digest) it is refused as a
`conflict`, and the first stands. A label changes only by a correction (a late
label with `"correction": true`), published as a new `Label` marked as such,
so downstream replaces the label rather than dropping it as a repeat; another
label without it is a `conflict` too.

Labels and observations arrive in any order: a label producer rarely knows the
entity, so its records land on other partitions than their observations and
can overtake them. A label for an id the index has never seen is held (in the
index, so it survives a restart) and published right after its observation
when that is accepted, in the same batch or a later one, either way in. At
most `max_held_labels` wait at once; one that waited `label_wait` in vain is
dead-lettered by `expire_held` with rule `label_unmatched`, and one its
observation's own label contradicts with rule `conflict`.
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
    held_label_deadletter,
    label_message,
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
    correction_cloudevent_id,
    label_cloudevent_id,
)
from driftloop_ingestion.rules import (
    CORRECTION,
    EVENT_ID,
    RULE_CONFLICT,
    RULE_HELD_LABELS_FULL,
    RULE_LABEL_UNMATCHED,
    RULE_UNKNOWN_EVENT_ID,
    Problem,
    Rejection,
    show,
    show_duration,
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
        self._label_field = validator.featureset.label
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
        labelled: dict[str, int] = {}  # earlier observations (re)labelled in this batch
        # Labels held by this batch, with their position in `outcomes`.
        holding: dict[str, tuple[int, HeldLabel]] = {}
        release: list[str] = []  # labels held before, released by this batch
        letters: list[bytes] = []  # labels held before that their observation contradicts
        publications: list[Publication] = []
        outcomes: list[Outcome] = []
        for position, (item, event) in enumerate(zip(batch, checked, strict=True)):
            if isinstance(event, Rejection):
                outcomes.append(event)
                continue
            event_id = event.event_id
            if isinstance(event, ValidObservation):
                encoded, digest = self._encoder.encode_with_digest(event, ingested_at_ms=now_ms)
                earlier = accepted.get(event_id)
                if earlier is None:
                    seen = known.get(event_id)
                    if seen is not None and seen.seen_at_ms >= dedup_after:
                        earlier = seen
                if earlier is not None:
                    # Rows indexed before digests were kept have none: a duplicate, as then.
                    if earlier.digest is not None and earlier.digest != digest:
                        outcomes.append(self._conflict(event, earlier))
                    else:
                        outcomes.append(Accepted(event_id, OBSERVATION, True, earlier.entity_id))
                    continue
                entry = IndexEntry(
                    event_id,
                    event.entity_id,
                    event.event_time_ms,
                    now_ms,
                    event.label is not None,
                    digest,
                    event.label,
                )
                publications.append(Publication(encoded, OBSERVATION, event.entity_id, event_id))
                outcomes.append(Accepted(event_id, OBSERVATION, False, event.entity_id))
                waiting = holding.pop(event_id, None)
                if waiting is None and event_id in held:
                    release.append(event_id)
                    waiting = (-1, held[event_id])
                if waiting is not None:
                    at, early = waiting
                    answer: Outcome
                    if event.label is None:
                        entry = entry._replace(labelled=True, label=early.label)
                        publications.append(self._label(event_id, early.label, entry, now_ms))
                        answer = Accepted(event_id, LABEL, False, event.entity_id)
                    elif early.label == event.label:
                        # An observation that carries the same label makes the held one a repeat.
                        answer = Accepted(event_id, LABEL, True, event.entity_id)
                    else:
                        answer = self._held_conflict(event_id, early.label, event.label)
                        if at < 0:
                            letters.append(self._held_letter(early, answer, now_ms))
                    if at >= 0:
                        outcomes[at] = answer
                accepted[event_id] = entry
                continue
            # A late label: its event id should name an observation seen before.
            joined = accepted.get(event_id) or known.get(event_id)
            if joined is None:
                if event.correction:
                    outcomes.append(self._nothing_to_correct(event_id))
                elif event_id in held or event_id in holding:
                    waiting_label = (held.get(event_id) or holding[event_id][1]).label
                    if waiting_label == event.label:
                        outcomes.append(Accepted(event_id, LABEL, True, "", held=True))
                    else:
                        outcomes.append(self._held_twice(event_id, waiting_label, event.label))
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
            correction = False
            if event_id in labelled or (joined.labelled and joined.seen_at_ms >= on_broker_after):
                current = labelled.get(event_id, joined.label)
                if current == event.label or (current is None and not event.correction):
                    # The same label again (a label indexed without its value: as before).
                    outcomes.append(Accepted(event_id, LABEL, True, joined.entity_id))
                    continue
                if not event.correction:
                    outcomes.append(self._label_conflict(event_id, current, event.label))
                    continue
                correction = True
            if event_id in accepted:
                accepted[event_id] = joined._replace(labelled=True, label=event.label)
            else:
                labelled[event_id] = event.label
            publications.append(
                self._label(event_id, event.label, joined, now_ms, correction_at=position)
                if correction
                else self._label(event_id, event.label, joined, now_ms)
            )
            outcomes.append(Accepted(event_id, LABEL, False, joined.entity_id))
        if publications:
            await self._sink.publish(publications)
        if letters:
            await self._sink.deadletter(letters)
            REJECTIONS.labels("held", RULE_CONFLICT).inc(len(letters))
        if publications or holding or release:
            hold = [label for _, label in holding.values()]
            index.record(list(accepted.values()), labelled, hold=hold, release=release)
            if holding or release:
                HELD_LABELS.set(held_count + len(holding) - len(release))
        return outcomes

    def _label(
        self,
        event_id: str,
        label: int,
        entry: IndexEntry,
        now_ms: int,
        *,
        correction_at: int | None = None,
    ) -> Publication:
        """A `Label` for `events.valid`, keyed by its observation's entity; a
        correction (at its position in the batch) when `correction_at` is given."""
        message = label_message(
            event_id=event_id,
            entity_id=entry.entity_id,
            label=label,
            event_time_ms=entry.event_time_ms,
            feature_set=self._feature_set,
            ingested_at_ms=now_ms,
        )
        if correction_at is None:
            ce_id = label_cloudevent_id(event_id)
        else:
            ce_id = correction_cloudevent_id(event_id, now_ms, correction_at)
        return Publication(
            message.SerializeToString(),
            LABEL,
            entry.entity_id,
            ce_id,
            correction=correction_at is not None,
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
                self._index.record([], {}, release=[label.event_id for label in letters])
        finally:
            self._release(ids, done)
        LABELS_EXPIRED.inc(len(letters))
        HELD_LABELS.set(self._index.held_count())
        return len(letters)

    def _unmatched(self, label: HeldLabel, now_ms: int) -> bytes:
        wait = show_duration(self._label_wait)
        letter = held_label_deadletter(
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
            f"{show_duration(self._label_horizon)} ago, so this late label can no longer label it",
        )

    def _nothing_to_correct(self, event_id: str) -> Rejection:
        return _label_rejection(
            event_id,
            RULE_UNKNOWN_EVENT_ID,
            f"no observation {event_id!r} has been accepted, so there is no label to correct "
            f"(a label without {CORRECTION} waits for its observation)",
        )

    def _how_to_correct(self, event_id: str, label: int) -> str:
        body = json.dumps({EVENT_ID: event_id, self._label_field: label, CORRECTION: True})
        return f"to change it, send {body}"

    def _conflict(self, event: ValidObservation, earlier: IndexEntry) -> Rejection:
        """An observation whose id was accepted with other content: say what differs."""
        featureset = self._validator.featureset
        differs = []
        if earlier.entity_id != event.entity_id:
            differs.append(
                f"{featureset.entity} {show(earlier.entity_id)} then, {show(event.entity_id)} now"
            )
        if earlier.event_time_ms != event.event_time_ms:
            differs.append(
                f"{featureset.timestamp} {earlier.event_time_ms} then, {event.event_time_ms} now"
            )
        what = "; ".join(differs) or "other field values or label"
        return _label_rejection(
            event.event_id,
            RULE_CONFLICT,
            f"{event.event_id!r} was accepted before with other content ({what}); an event id "
            "names one event: send a new event under a new id, and correct a label with "
            f'"{CORRECTION}": true',
        )

    def _label_conflict(self, event_id: str, current: int | None, label: int) -> Rejection:
        return _label_rejection(
            event_id,
            RULE_CONFLICT,
            f"observation {event_id!r} is labelled {current} already; another label for it is "
            f"a conflict, not a duplicate: {self._how_to_correct(event_id, label)}",
        )

    def _held_twice(self, event_id: str, waiting: int, label: int) -> Rejection:
        return _label_rejection(
            event_id,
            RULE_CONFLICT,
            f"the label {waiting} already waits for observation {event_id!r}; another label "
            "for it is a conflict, not a duplicate: once the observation is accepted, "
            f"{self._how_to_correct(event_id, label)}",
        )

    def _held_conflict(self, event_id: str, held: int, own: int) -> Rejection:
        return _label_rejection(
            event_id,
            RULE_CONFLICT,
            f"the label {held} that waited for observation {event_id!r} disagrees with the "
            f"label {own} the observation carries, which stands: "
            f"{self._how_to_correct(event_id, held)}",
        )

    def _held_letter(self, label: HeldLabel, rejection: Rejection, now_ms: int) -> bytes:
        """The dead letter of a label held before, which its observation contradicts."""
        letter = held_label_deadletter(
            event_id=label.event_id,
            payload=label.payload,
            origin=label.origin,
            reason=rejection.reason,
            rule=rejection.rule,
            failed_at_ms=now_ms,
        )
        return letter.SerializeToString()


def _label_rejection(event_id: str, rule: str, why: str) -> Rejection:
    return Rejection((Problem(EVENT_ID, rule, f"{EVENT_ID}: {why}"),), event_id)


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
