"""What the ingestion handler works with: the records in and out, and its ports.

`Ingestor` (handlers.py) takes `Incoming` records and answers an `Outcome` for
each; it remembers accepted events in an `EventIndex` and publishes through an
`EventSink`. The composition root hands in the SQLite index
(`adapters/event_index.py`) and the Kafka sink (`adapters/sink.py`); tests may
hand in others.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any, Literal, NamedTuple, Protocol

from driftloop_core.kafka.headers import LABEL_CORRECTION_HEADER

from driftloop_ingestion.rules import Rejection
from driftloop_ingestion.validation import Origin

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
    """An event that passed; `duplicate` when it was seen before and not published;
    `held` for a label waiting for its observation (its entity still unknown)."""

    event_id: str
    kind: Kind
    duplicate: bool
    entity_id: str
    held: bool = False


Outcome = Accepted | Rejection


class IndexEntry(NamedTuple):
    """What the index remembers of an accepted observation: the `digest` of its
    content (`ObservationEncoder.encode_with_digest`: entity, time, values, own
    label) tells a re-send from a conflict,
    and `label` is its label now (own, late or corrected). Rows written before
    these were kept have neither (None): a re-send of theirs counts as a duplicate."""

    event_id: str
    entity_id: str
    event_time_ms: int
    seen_at_ms: int
    labelled: bool
    digest: bytes | None = None
    label: int | None = None


class HeldLabel(NamedTuple):
    """A label waiting for its observation: its raw payload and origin are kept
    for the dead letter it becomes if the observation never comes."""

    event_id: str
    label: int
    held_at_ms: int
    payload: bytes
    origin: Origin | None


class EventIndex(Protocol):
    """Accepted observations and held labels by event id; survives restarts."""

    def lookup(self, event_ids: Collection[str]) -> Mapping[str, IndexEntry]:
        """The entries of those ids that are known (a missing id is unknown)."""
        ...

    def record(
        self,
        observations: Sequence[IndexEntry],
        labelled: Mapping[str, int],
        *,
        hold: Sequence[HeldLabel] = (),
        release: Sequence[str] = (),
    ) -> None:
        """Store new or refreshed observations, mark ids as labelled with their
        label now, hold new labels and forget released ones, atomically."""
        ...

    def held(self, event_ids: Collection[str]) -> Mapping[str, HeldLabel]:
        """The held labels of those ids."""
        ...

    def held_count(self) -> int:
        """How many labels are held."""
        ...

    def held_before(self, held_before_ms: int, limit: int) -> Sequence[HeldLabel]:
        """Up to `limit` labels held since before `held_before_ms`, oldest first."""
        ...


class Publication(NamedTuple):
    """An encoded `Observation` or `Label` for `events.valid`, keyed by entity,
    with its CloudEvents id; a `correction` label replaces the one before it."""

    value: bytes
    kind: Kind
    key: str
    event_id: str
    correction: bool = False


class EventSink(Protocol):
    async def publish(self, events: Sequence[Publication]) -> None:
        """Return once every event is acknowledged; raise `PublishFailed` otherwise."""
        ...

    async def deadletter(self, letters: Sequence[bytes]) -> None:
        """Dead-letter encoded `DeadLetter`s; same acknowledgement contract as `publish`."""
        ...


# The record header that marks a `Label` on events.valid as a correction: it
# replaces the label its event was given before (drift re-scores the joined
# prediction, the offline log keeps the latest), and is not a duplicate.
CORRECTION_HEADER = LABEL_CORRECTION_HEADER


class PublishFailed(Exception):
    """The valid events could not be published; nothing of the batch may be acknowledged."""


def label_cloudevent_id(event_id: str) -> str:
    """A label shares its observation's event id; its CloudEvents id must differ."""
    return event_id + ":label"


def correction_cloudevent_id(event_id: str, ingested_at_ms: int, position: int) -> str:
    """Each correction is a new event: its CloudEvents id names when it was
    accepted (and its place in the batch), so no consumer drops it by id."""
    return f"{event_id}:correction:{ingested_at_ms}.{position}"
