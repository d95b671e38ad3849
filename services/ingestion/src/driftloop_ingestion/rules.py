"""The vocabulary of a refused event: rules, problems and rejections.

Every problem names the field and the rule that failed, in the vocabulary of
`DeadLetter.rule`; both ways in show it as it is (gRPC `INVALID_ARGUMENT`
details, dead-letter records):

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
                    or before 2000-01-01
    future          an event time later than the wall clock plus the allowed
                    clock skew (`DRIFTLOOP_INGESTION_MAX_FUTURE`, by default
                    the feature set's `grace`)
    length          an event id or entity id longer than 256 bytes of UTF-8
    label           a label other than 0 or 1
    conflict        an event id accepted before comes again with other
                    content (another entity, time, values or label); an
                    identical re-send is a duplicate, and a label is changed
                    only by a correction (`"correction": true`)
    unknown_event_id  a late label for an observation accepted longer ago
                    than the label horizon, or a correction for an
                    observation not accepted (decided by the handler, which
                    owns the event index; a plain label for an id never seen
                    is held)
    held_labels_full  a label for an id never seen, while the most labels
                    allowed to wait for their observations already do
                    (`DRIFTLOOP_INGESTION_MAX_HELD_LABELS`)
    label_unmatched   a held label whose observation did not arrive within
                    the label wait (`DRIFTLOOP_INGESTION_LABEL_WAIT`)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final

from driftloop_core import ids

RULE_JSON: Final = "json"
RULE_SIZE: Final = "size"
RULE_REQUIRED: Final = "required"
RULE_UNKNOWN_FIELD: Final = "unknown_field"
RULE_TYPE: Final = "type"
RULE_MIN: Final = "min"
RULE_MAX: Final = "max"
RULE_CATEGORY: Final = "category"
RULE_TIMESTAMP: Final = "timestamp"
RULE_FUTURE: Final = "future"
RULE_LENGTH: Final = "length"
RULE_LABEL: Final = "label"
RULE_CONFLICT: Final = "conflict"
RULE_UNKNOWN_EVENT_ID: Final = "unknown_event_id"
RULE_HELD_LABELS_FULL: Final = "held_labels_full"
RULE_LABEL_UNMATCHED: Final = "label_unmatched"

EVENT_ID: Final = "event_id"
# A late label with `"correction": true` replaces the label given before.
CORRECTION: Final = "correction"

# The longest event id or entity id, in UTF-8 bytes: ids are keys of Kafka
# records, index rows and feature-store states, not payloads.
MAX_ID_BYTES: Final = ids.MAX_ID_BYTES

# A reason lists this many problems at most, then how many more there were.
MAX_PROBLEMS: Final = 10


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


def _join(parts: list[str]) -> str:
    if len(parts) > MAX_PROBLEMS:
        hidden = len(parts) - MAX_PROBLEMS
        parts = [*parts[:MAX_PROBLEMS], f"and {hidden} more problem{'s' * (hidden > 1)}"]
    return "; ".join(parts)


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
        return show_number(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "an array"
    return type(value).__name__


def show_number(value: float) -> str:
    if math.isfinite(value) and value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    return repr(value)


def show_duration(span: timedelta) -> str:
    """`24h`, `90m` or `5s`: the way durations are configured."""
    seconds = span / timedelta(seconds=1)
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"
