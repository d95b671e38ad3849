"""Raw events checked against the feature set, before anything is published.

The rules live here once, so a record on `events.raw` and a gRPC call meet the
same judge. The module is pure (no gRPC, no Kafka, no clock it does not get
handed): the entrypoints turn a `Rejection` into `INVALID_ARGUMENT` or a
dead-letter record, and the handler turns a valid event into protobuf.

An event with the entity field is an observation; one without it, carrying only
`event_id`, the label and optionally the timestamp, is a late label (with
`"correction": true`, one that replaces the label given before). Every
problem names the field and the rule that failed (`rules.py`).

Time is bounded by the wall clock: an event time later than now plus the
allowed skew (`max_future`, by default the feature set's `grace`) is refused
with rule `future`. Downstream, the feature store moves an entity's clock to
its latest event and counts an event only within `grace` of it; one event
from far ahead would make every real event after it too late. Ids are
bounded too (`MAX_ID_BYTES`), since they become keys everywhere.

JSON text is decoded within its size limit (`decoding.py`), each feature-set
field is checked by a check compiled once (`fields.py`), and the rules that
span fields (event id, entity, timestamp, label, unknown keys) are checked here.

All problems of an event are reported, in a fixed order: event id, entity,
timestamp, the feature-set fields in declaration order, label, then unknown
keys sorted by name.
"""

from __future__ import annotations

import math
import re
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final, NamedTuple

from driftloop_core.featureset import FeatureSet
from driftloop_core.ids import oversized

from driftloop_ingestion.decoding import DEFAULT_MAX_EVENT_BYTES, decode_event
from driftloop_ingestion.fields import FieldCheck, FieldValue, Invalid, field_check
from driftloop_ingestion.rules import (
    CORRECTION,
    EVENT_ID,
    MAX_ID_BYTES,
    RULE_FUTURE,
    RULE_LABEL,
    RULE_LENGTH,
    RULE_REQUIRED,
    RULE_TIMESTAMP,
    RULE_TYPE,
    RULE_UNKNOWN_FIELD,
    Problem,
    Rejection,
    show,
    show_duration,
)

# Event times before this are a unit mistake (epoch seconds) or a zero value.
EARLIEST_EVENT_TIME: Final = datetime(2000, 1, 1, tzinfo=UTC)
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_RFC3339: Final = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})\Z"
)
# Ids derived from a record's position (Kafka) live in their own uuid5 namespace.
_ORIGIN_NAMESPACE: Final = uuid.UUID("6f1c2f0e-5a0e-4d8e-9a57-3f8f3c7d1a10")


class ValidObservation(NamedTuple):
    """An observation that passed every rule, values converted to their declared types."""

    event_id: str
    entity_id: str
    event_time_ms: int
    values: dict[str, FieldValue]
    label: int | None = None


class ValidLabel(NamedTuple):
    """A late label that passed every rule; whether its event exists is checked later.
    A `correction` replaces the label its event was given before."""

    event_id: str
    label: int
    correction: bool = False


Validated = ValidObservation | ValidLabel | Rejection


def _iso(ms: int) -> str:
    moment = _EPOCH + timedelta(milliseconds=ms)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def _epoch_ms_shown(ms: int) -> str:
    """Epoch milliseconds with their RFC 3339 form, when there is one (year <= 9999)."""
    try:
        return f"{ms} ({_iso(ms)})"
    except OverflowError:
        return str(ms)


Origin = tuple[str | int, ...]


def origin_event_id(origin: Origin) -> str:
    """The id given to an event that came without one, derived from where it was
    read (e.g. topic, partition, offset and record timestamp), so a replay of
    the same record gets the same id."""
    return uuid.uuid5(_ORIGIN_NAMESPACE, "/".join(map(str, origin))).hex


def new_event_id() -> str:
    """The id given to an event that came without one and has no stable origin."""
    return uuid.uuid4().hex


class Validator:
    """Checks raw events against one feature set.

    `clock` returns the current epoch time in seconds; an event time may lie at
    most `max_future` after it (default: the feature set's `grace`). JSON texts
    longer than `max_event_bytes` are refused unread.
    """

    def __init__(
        self,
        featureset: FeatureSet,
        *,
        clock: Callable[[], float] = time.time,
        max_future: timedelta | None = None,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    ) -> None:
        self.featureset = featureset
        self.max_event_bytes = max_event_bytes
        self._clock = clock
        self.max_future = featureset.grace if max_future is None else max_future
        self._max_future_ms = int(self.max_future / timedelta(milliseconds=1))
        self._earliest_ms = int((EARLIEST_EVENT_TIME - _EPOCH) / timedelta(milliseconds=1))
        self._entity = featureset.entity
        self._timestamp = featureset.timestamp
        self._label = featureset.label
        self._fields: tuple[tuple[str, FieldCheck, bool], ...] = tuple(
            (name, field_check(name, spec), spec.required)
            for name, spec in featureset.fields.items()
        )
        self._known = frozenset(
            {EVENT_ID, self._entity, self._timestamp, self._label, *featureset.fields}
        )
        self._field_names = frozenset(featureset.fields)

    def validate_json(self, payload: bytes | str, *, origin: Origin | None = None) -> Validated:
        data = decode_event(payload, self.max_event_bytes)
        if isinstance(data, Rejection):
            return data
        return self.validate(data, origin=origin)

    def validate(self, data: Mapping[str, Any], *, origin: Origin | None = None) -> Validated:
        """Check one decoded event.

        A missing `event_id` on an observation is assigned: derived from
        `origin` when given (a replay then gets the same id), else random.
        """
        entity_raw = data.get(self._entity)
        if entity_raw is None and self._entity not in data and self._is_label_shaped(data):
            return self._validate_label(data)
        return self._validate_observation(data, origin)

    def _is_label_shaped(self, data: Mapping[str, Any]) -> bool:
        """No entity, a label, and no feature field: the user meant a late label."""
        return self._label in data and not any(key in self._field_names for key in data)

    def _validate_observation(self, data: Mapping[str, Any], origin: Origin | None) -> Validated:
        problems: list[Problem] = []
        event_id = self._event_id(data, problems, required=False)

        entity_id = ""
        entity = data.get(self._entity)
        kind = type(entity)
        if kind is str and entity:
            entity_id = entity
        elif kind is int:
            entity_id = str(entity)
        if entity_id:
            if _too_long(entity_id):
                problems.append(_long_id(self._entity, entity_id))
        elif entity is None:
            what = "but got null" if self._entity in data else "but missing"
            problems.append(
                Problem(
                    self._entity,
                    RULE_REQUIRED,
                    f"{self._entity}: is required (the entity of an observation) {what}",
                )
            )
        elif entity == "":
            problems.append(
                Problem(self._entity, RULE_REQUIRED, f"{self._entity}: must not be empty")
            )
        else:
            problems.append(
                Problem(
                    self._entity,
                    RULE_TYPE,
                    f"{self._entity}: must be a string or an integer, got {show(entity)}",
                )
            )

        event_time_ms = self._event_time(data, problems, required=True)

        values: dict[str, FieldValue] = {}
        for name, check, required in self._fields:
            value = data.get(name)
            if value is None:
                if required:
                    what = "but got null" if name in data else "but missing"
                    problems.append(Problem(name, RULE_REQUIRED, f"{name}: is required {what}"))
                continue
            try:
                values[name] = check(value)
            except Invalid as invalid:
                problems.append(Problem(name, invalid.rule, invalid.reason))

        label = self._label_value(data, problems, required=False)
        unknown = data.keys() - self._known
        if unknown:
            for key in sorted(unknown):
                what = (
                    "only a late label (no entity) can be a correction"
                    if key == CORRECTION
                    else f"is not a field of feature set {self.featureset.name}"
                )
                problems.append(Problem(key, RULE_UNKNOWN_FIELD, f"{key}: {what}"))
        if problems:
            return Rejection(tuple(problems), event_id or "")
        assert event_time_ms is not None
        if event_id is None:
            event_id = origin_event_id(origin) if origin is not None else new_event_id()
        return ValidObservation(event_id, entity_id, event_time_ms, values, label)

    def _validate_label(self, data: Mapping[str, Any]) -> Validated:
        problems: list[Problem] = []
        event_id = self._event_id(data, problems, required=True)
        if self._timestamp in data:
            self._event_time(data, problems, required=False)
        label = self._label_value(data, problems, required=True)
        correction = data.get(CORRECTION, False)
        if type(correction) is not bool:
            problems.append(
                Problem(
                    CORRECTION,
                    RULE_TYPE,
                    f"{CORRECTION}: must be true or false, got {show(correction)}",
                )
            )
        allowed = (EVENT_ID, self._label, self._timestamp, CORRECTION)
        for key in sorted(data):
            if key not in allowed:
                problems.append(
                    Problem(
                        key,
                        RULE_UNKNOWN_FIELD,
                        f"{key}: a late label takes only {EVENT_ID}, {self._label}, "
                        f"{self._timestamp} and {CORRECTION} (an observation needs {self._entity})",
                    )
                )
        if problems:
            return Rejection(tuple(problems), event_id or "")
        assert event_id is not None and label is not None
        return ValidLabel(event_id, label, correction is True)

    def _event_id(
        self, data: Mapping[str, Any], problems: list[Problem], *, required: bool
    ) -> str | None:
        raw = data.get(EVENT_ID)
        kind = type(raw)
        if (kind is str and raw) or kind is int:
            event_id = str(raw)
            if _too_long(event_id):
                # Not returned: a rejection quoting a huge id would carry it along.
                problems.append(_long_id(EVENT_ID, event_id))
                return None
            return event_id
        if raw is None:
            if required:
                problems.append(
                    Problem(
                        EVENT_ID,
                        RULE_REQUIRED,
                        f"{EVENT_ID}: is required on a late label "
                        "(the id of the observation it labels)",
                    )
                )
            return None
        if raw == "":
            problems.append(Problem(EVENT_ID, RULE_REQUIRED, f"{EVENT_ID}: must not be empty"))
        else:
            problems.append(
                Problem(
                    EVENT_ID,
                    RULE_TYPE,
                    f"{EVENT_ID}: must be a string or an integer, got {show(raw)}",
                )
            )
        return None

    def _event_time(
        self, data: Mapping[str, Any], problems: list[Problem], *, required: bool
    ) -> int | None:
        name = self._timestamp
        raw: Any = data.get(name)
        kind = type(raw)
        ms: int
        if kind is int:
            ms = raw
        elif kind is float and math.isfinite(raw) and raw.is_integer():
            ms = int(raw)
        elif kind is str:
            parsed = _rfc3339_ms(raw)
            if parsed is None:
                problems.append(
                    Problem(
                        name,
                        RULE_TIMESTAMP,
                        f"{name}: must be RFC 3339 with a UTC offset "
                        f"(e.g. 2025-11-22T08:26:40Z) or epoch milliseconds, got {show(raw)}",
                    )
                )
                return None
            ms = parsed
        elif raw is None:
            if required:
                what = "but got null" if name in data else "but missing"
                problems.append(Problem(name, RULE_REQUIRED, f"{name}: is required {what}"))
            return None
        else:
            problems.append(
                Problem(
                    name,
                    RULE_TIMESTAMP,
                    f"{name}: must be an RFC 3339 string or integer epoch milliseconds, "
                    f"got {show(raw)}",
                )
            )
            return None
        now_ms = int(self._clock() * 1000)
        latest = now_ms + self._max_future_ms
        if ms < self._earliest_ms:
            hint = ""
            if self._earliest_ms <= ms * 1000 <= latest:
                hint = " (epoch seconds? it must be milliseconds)"
            shown = show(raw) if kind is str else str(ms)
            problems.append(
                Problem(
                    name,
                    RULE_TIMESTAMP,
                    f"{name}: must not lie before {_iso(self._earliest_ms)}, got {shown}{hint}",
                )
            )
            return None
        if ms > latest:
            shown = show(raw) if kind is str else _epoch_ms_shown(ms)
            problems.append(
                Problem(
                    name,
                    RULE_FUTURE,
                    f"{name}: must not lie more than {show_duration(self.max_future)} after "
                    f"the current time {_iso(now_ms)} (DRIFTLOOP_INGESTION_MAX_FUTURE), "
                    f"got {shown}",
                )
            )
            return None
        return ms

    def _label_value(
        self, data: Mapping[str, Any], problems: list[Problem], *, required: bool
    ) -> int | None:
        name = self._label
        raw = data.get(name)
        kind = type(raw)
        if (kind is int or kind is float) and (raw == 0 or raw == 1):
            return int(raw)
        if raw is None and not required:
            return None
        problems.append(Problem(name, RULE_LABEL, f"{name}: must be 0 or 1, got {show(raw)}"))
        return None


def _too_long(identifier: str) -> bool:
    return oversized(identifier) is not None


def _long_id(field: str, identifier: str) -> Problem:
    size = len(identifier.encode("utf-8", "surrogatepass"))
    return Problem(
        field,
        RULE_LENGTH,
        f"{field}: must be at most {MAX_ID_BYTES} bytes of UTF-8, got {size} bytes "
        f"starting {show(identifier)}",
    )


def _rfc3339_ms(text: str) -> int | None:
    """Epoch milliseconds of an RFC 3339 timestamp, or None when it is not one."""
    if not _RFC3339.match(text):
        return None
    try:
        moment = datetime.fromisoformat(text.upper())
    except ValueError:
        return None
    return (moment - _EPOCH) // timedelta(milliseconds=1)


__all__ = [
    "EVENT_ID",
    "Origin",
    "Problem",
    "Rejection",
    "ValidLabel",
    "ValidObservation",
    "Validated",
    "Validator",
    "new_event_id",
    "origin_event_id",
]
