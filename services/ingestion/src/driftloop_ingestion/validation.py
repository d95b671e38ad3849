"""Raw events checked against the feature set, before anything is published.

The rules live here once, so a record on `events.raw` and a gRPC call meet the
same judge. The module is pure (no gRPC, no Kafka, no clock it does not get
handed): the entrypoints turn a `Rejection` into `INVALID_ARGUMENT` or a
dead-letter record, and the handler turns a valid event into protobuf.

An event with the entity field is an observation; one without it, carrying only
`event_id`, the label and optionally the timestamp, is a late label. Every
problem names the field and the rule that failed, in the vocabulary of
`DeadLetter.rule`:

    json            not a JSON object (or not JSON at all); field is empty
    size            JSON text longer than the configured limit
                    (`DRIFTLOOP_INGESTION_MAX_EVENT_BYTES`); field is empty
    required        a required field is missing, null or empty
    unknown_field   a key the feature set does not declare
    type            a value of the wrong JSON type (float takes ints, not
                    booleans or strings; int takes integral numbers only)
    min, max        a number outside the declared range
    category        a category value outside the declared `values`
    timestamp       not RFC 3339 with an offset or integral epoch milliseconds,
                    or outside [2000-01-01, now + 1 day]
    label           a label other than 0 or 1
    unknown_event_id  a late label for an event id never seen (decided by the
                    handler, which owns the event index)

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
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, NamedTuple

import orjson
from driftloop_core.featureset import FeatureSet, FieldSpec

RULE_JSON: Final = "json"
RULE_SIZE: Final = "size"
RULE_REQUIRED: Final = "required"
RULE_UNKNOWN_FIELD: Final = "unknown_field"
RULE_TYPE: Final = "type"
RULE_MIN: Final = "min"
RULE_MAX: Final = "max"
RULE_CATEGORY: Final = "category"
RULE_TIMESTAMP: Final = "timestamp"
RULE_LABEL: Final = "label"
RULE_UNKNOWN_EVENT_ID: Final = "unknown_event_id"

EVENT_ID: Final = "event_id"

# Event times before this are a unit mistake (epoch seconds) or a zero value.
EARLIEST_EVENT_TIME: Final = datetime(2000, 1, 1, tzinfo=UTC)
# Clock skew a producer may have before its events count as coming from the future.
DEFAULT_MAX_FUTURE: Final = timedelta(days=1)
# A reason lists this many problems at most, then how many more there were.
MAX_PROBLEMS: Final = 10
# The longest JSON text taken for one event. Events are a few hundred bytes; the
# limit keeps one huge record from costing a parse, and keeps its dead letter
# within the producer's 1 MiB request size.
DEFAULT_MAX_EVENT_BYTES: Final = 256 * 1024

_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_RFC3339: Final = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})\Z"
)
# Ids derived from a record's position (Kafka) live in their own uuid5 namespace.
_ORIGIN_NAMESPACE: Final = uuid.UUID("6f1c2f0e-5a0e-4d8e-9a57-3f8f3c7d1a10")


@dataclass(frozen=True, slots=True)
class Problem:
    """One broken rule: the field it concerns (empty for the whole event)."""

    field: str
    rule: str
    reason: str


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why an event was refused: every problem found, first one first."""

    problems: tuple[Problem, ...]
    event_id: str = ""

    @property
    def field(self) -> str:
        return self.problems[0].field

    @property
    def rule(self) -> str:
        return self.problems[0].rule

    @property
    def reason(self) -> str:
        """Each problem's reason, joined; each names its field."""
        return _join([problem.reason for problem in self.problems])

    def describe(self) -> str:
        """The reasons with their rules, for callers who see only a message (gRPC)."""
        return _join([f"{problem.reason} (rule: {problem.rule})" for problem in self.problems])


def _utf8_size(payload: bytes | str, limit: int) -> int:
    """The payload's size in UTF-8 bytes; for a str too short to exceed `limit`
    even at 4 bytes a character, its length (a lower bound) without encoding it."""
    if isinstance(payload, bytes):
        return len(payload)
    if len(payload) * 4 <= limit:
        return len(payload)
    return len(payload.encode("utf-8", errors="surrogatepass"))


def _join(parts: list[str]) -> str:
    if len(parts) > MAX_PROBLEMS:
        hidden = len(parts) - MAX_PROBLEMS
        parts = [*parts[:MAX_PROBLEMS], f"and {hidden} more problem{'s' * (hidden > 1)}"]
    return "; ".join(parts)


FieldValue = float | int | str | bool


class ValidObservation(NamedTuple):
    """An observation that passed every rule, values converted to their declared types."""

    event_id: str
    entity_id: str
    event_time_ms: int
    values: dict[str, FieldValue]
    label: int | None = None


class ValidLabel(NamedTuple):
    """A late label that passed every rule; whether its event exists is checked later."""

    event_id: str
    label: int


Validated = ValidObservation | ValidLabel | Rejection


class _Invalid(Exception):
    """Raised by a field check; cheap because the valid path never raises."""

    def __init__(self, rule: str, reason: str) -> None:
        self.rule = rule
        self.reason = reason


def show(value: Any) -> str:
    """A value as a reason quotes it: JSON spelling, long strings cut."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        text = value if len(value) <= 40 else value[:37] + "..."
        return repr(text)
    if isinstance(value, float):
        return _number(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "an array"
    return type(value).__name__


def _number(value: float) -> str:
    if math.isfinite(value) and value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    return repr(value)


FieldCheck = Callable[[Any], FieldValue]


def _float_check(name: str, spec: FieldSpec) -> FieldCheck:
    low, high = spec.min, spec.max

    def check(value: Any) -> FieldValue:
        kind = type(value)
        if kind is int:
            try:
                value = float(value)
            except OverflowError:
                raise _Invalid(RULE_TYPE, f"{name}: must be a finite number, got {value}") from None
        elif kind is not float:
            raise _Invalid(RULE_TYPE, f"{name}: must be a number, got {show(value)}")
        elif not math.isfinite(value):
            raise _Invalid(RULE_TYPE, f"{name}: must be a finite number, got {value}")
        if low is not None and value < low:
            raise _Invalid(RULE_MIN, f"{name}: must be >= {_number(low)}, got {_number(value)}")
        if high is not None and value > high:
            raise _Invalid(RULE_MAX, f"{name}: must be <= {_number(high)}, got {_number(value)}")
        return float(value)

    return check


def _int_check(name: str, spec: FieldSpec) -> FieldCheck:
    low, high = spec.min, spec.max

    def check(value: Any) -> FieldValue:
        kind = type(value)
        if kind is float and math.isfinite(value) and value.is_integer():
            value = int(value)
        elif kind is not int:
            raise _Invalid(RULE_TYPE, f"{name}: must be an integer, got {show(value)}")
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise _Invalid(RULE_TYPE, f"{name}: must fit in 64 bits, got {value}")
        if low is not None and value < low:
            raise _Invalid(RULE_MIN, f"{name}: must be >= {_number(low)}, got {value}")
        if high is not None and value > high:
            raise _Invalid(RULE_MAX, f"{name}: must be <= {_number(high)}, got {value}")
        return int(value)

    return check


def _category_check(name: str, spec: FieldSpec) -> FieldCheck:
    allowed = frozenset(spec.values or ())
    listed = ", ".join(spec.values or ())

    def check(value: Any) -> FieldValue:
        if type(value) is not str:
            raise _Invalid(
                RULE_TYPE, f"{name}: must be a string, one of {listed}, got {show(value)}"
            )
        if value not in allowed:
            raise _Invalid(RULE_CATEGORY, f"{name}: must be one of {listed}, got {show(value)}")
        return str(value)

    return check


def _bool_check(name: str, spec: FieldSpec) -> FieldCheck:
    def check(value: Any) -> FieldValue:
        if type(value) is not bool:
            raise _Invalid(RULE_TYPE, f"{name}: must be true or false, got {show(value)}")
        return bool(value)

    return check


def _string_check(name: str, spec: FieldSpec) -> FieldCheck:
    def check(value: Any) -> FieldValue:
        if type(value) is not str:
            raise _Invalid(RULE_TYPE, f"{name}: must be a string, got {show(value)}")
        return str(value)

    return check


_CHECKS: dict[str, Callable[[str, FieldSpec], FieldCheck]] = {
    "float": _float_check,
    "int": _int_check,
    "category": _category_check,
    "bool": _bool_check,
    "string": _string_check,
}


def _iso(ms: int) -> str:
    moment = _EPOCH + timedelta(milliseconds=ms)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


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

    `clock` returns the current epoch time in seconds; it bounds how far in the
    future an event time may lie. JSON texts longer than `max_event_bytes` are
    refused unread.
    """

    def __init__(
        self,
        featureset: FeatureSet,
        *,
        clock: Callable[[], float] = time.time,
        max_future: timedelta = DEFAULT_MAX_FUTURE,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    ) -> None:
        self.featureset = featureset
        self.max_event_bytes = max_event_bytes
        self._clock = clock
        self._max_future_ms = int(max_future / timedelta(milliseconds=1))
        self._earliest_ms = int((EARLIEST_EVENT_TIME - _EPOCH) / timedelta(milliseconds=1))
        self._entity = featureset.entity
        self._timestamp = featureset.timestamp
        self._label = featureset.label
        self._fields: tuple[tuple[str, FieldCheck, bool], ...] = tuple(
            (name, _CHECKS[spec.type](name, spec), spec.required)
            for name, spec in featureset.fields.items()
        )
        self._known = frozenset(
            {EVENT_ID, self._entity, self._timestamp, self._label, *featureset.fields}
        )
        self._field_names = frozenset(featureset.fields)

    # ----------------------------------------------------------------- parsing

    def parse(self, payload: bytes | str) -> dict[str, Any] | Rejection:
        """The JSON object in `payload`, or a `size` or `json` rejection."""
        size = _utf8_size(payload, self.max_event_bytes)
        if size > self.max_event_bytes:
            return Rejection(
                (
                    Problem(
                        "",
                        RULE_SIZE,
                        f"event is {size} bytes of JSON, more than the {self.max_event_bytes} "
                        "allowed (DRIFTLOOP_INGESTION_MAX_EVENT_BYTES)",
                    ),
                )
            )
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError as error:
            return Rejection((Problem("", RULE_JSON, f"event is not valid JSON: {error}"),))
        if type(data) is not dict:
            return Rejection(
                (Problem("", RULE_JSON, f"event must be a JSON object, got {show(data)}"),)
            )
        return data

    def validate_json(self, payload: bytes | str, *, origin: Origin | None = None) -> Validated:
        data = self.parse(payload)
        if isinstance(data, Rejection):
            return data
        return self.validate(data, origin=origin)

    # -------------------------------------------------------------- validation

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
            except _Invalid as invalid:
                problems.append(Problem(name, invalid.rule, invalid.reason))

        label = self._label_value(data, problems, required=False)
        unknown = data.keys() - self._known
        if unknown:
            for key in sorted(unknown):
                problems.append(
                    Problem(
                        key,
                        RULE_UNKNOWN_FIELD,
                        f"{key}: is not a field of feature set {self.featureset.name}",
                    )
                )
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
        allowed = (EVENT_ID, self._label, self._timestamp)
        for key in sorted(data):
            if key not in allowed:
                problems.append(
                    Problem(
                        key,
                        RULE_UNKNOWN_FIELD,
                        f"{key}: a late label takes only {EVENT_ID}, {self._label} and "
                        f"{self._timestamp} (an observation needs {self._entity})",
                    )
                )
        if problems:
            return Rejection(tuple(problems), event_id or "")
        assert event_id is not None and label is not None
        return ValidLabel(event_id, label)

    def _event_id(
        self, data: Mapping[str, Any], problems: list[Problem], *, required: bool
    ) -> str | None:
        raw = data.get(EVENT_ID)
        kind = type(raw)
        if kind is str and raw:
            return str(raw)
        if kind is int:
            return str(raw)
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
        latest = int(self._clock() * 1000) + self._max_future_ms
        if ms < self._earliest_ms or ms > latest:
            hint = ""
            if self._earliest_ms <= ms * 1000 <= latest:
                hint = " (epoch seconds? it must be milliseconds)"
            shown = show(raw) if kind is str else str(ms)
            problems.append(
                Problem(
                    name,
                    RULE_TIMESTAMP,
                    f"{name}: must lie between {_iso(self._earliest_ms)} and "
                    f"now + {self._max_future_ms // 3_600_000}h, got {shown}{hint}",
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


def _rfc3339_ms(text: str) -> int | None:
    """Epoch milliseconds of an RFC 3339 timestamp, or None when it is not one."""
    if not _RFC3339.match(text):
        return None
    try:
        moment = datetime.fromisoformat(text.upper())
    except ValueError:
        return None
    return (moment - _EPOCH) // timedelta(milliseconds=1)
