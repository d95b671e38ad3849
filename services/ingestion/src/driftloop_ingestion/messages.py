"""Validated events as the protobuf bytes `events.valid` carries.

Kept apart from validation so that only events that will really be published
(not duplicates, not labels for unknown ids) are encoded. Observations are
the bulk of ingestion's work, and building each one through the protobuf
message API (a map of `FeatureValue` sub-messages, two `Timestamp`s) cost more
than validating it; `ObservationEncoder` writes the same wire bytes directly,
with the parts every event of a batch shares (field keys, feature-set name,
ingestion time) encoded once. Its output parses to exactly the message the
API would build, which the tests check. Labels are rare and use the API.

Feature values are typed as the feature set declares them: a float field is a
`float_value`, an int field an `int_value`, a category or string field a
`string_value`; `FeatureValue` has no boolean, so a bool field travels as an
`int_value` of 0 or 1.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable

from driftloop.v1 import events_pb2
from driftloop_core.featureset import FeatureSet

from driftloop_ingestion.rules import EVENT_ID
from driftloop_ingestion.validation import Origin, ValidObservation

_pack_double: Callable[[float], bytes] = struct.Struct("<d").pack
_SMALL_VARINTS = tuple(bytes((value,)) for value in range(0x80))

# Wire tags: (field number << 3) | wire type (0 varint, 1 fixed64, 2 length-delimited).
_EVENT_ID = b"\x0a"  # Observation.event_id = 1
_ENTITY_ID = b"\x12"  # Observation.entity_id = 2
_EVENT_TIME = b"\x1a"  # Observation.event_time = 3
_VALUES = b"\x22"  # Observation.values = 4 (map entries)
_LABEL = b"\x28"  # Observation.label = 5 (optional int64)
_INGESTED_AT = b"\x32"  # Observation.ingested_at = 6
_FEATURE_SET = b"\x3a"  # Observation.feature_set = 7
_MAP_VALUE = b"\x12"  # map entry value = 2 (key = 1)
_FLOAT_VALUE = b"\x09"  # FeatureValue.float_value = 1 (double)
_INT_VALUE = b"\x10"  # FeatureValue.int_value = 2
_STRING_VALUE = b"\x1a"  # FeatureValue.string_value = 3


def _varint(value: int) -> bytes:
    """Base-128 varint; negative int64 values take ten bytes, as protobuf writes them.

    Unrolled for the common sizes: a loop costs more than the rest of an event.
    """
    if 0 <= value < 0x80:
        return _SMALL_VARINTS[value]
    if value < 0:
        value += 1 << 64
    if value < 0x4000:
        return bytes(((value & 0x7F) | 0x80, value >> 7))
    if value < 0x200000:
        return bytes(((value & 0x7F) | 0x80, ((value >> 7) & 0x7F) | 0x80, value >> 14))
    if value < 0x10000000:
        return bytes(
            (
                (value & 0x7F) | 0x80,
                ((value >> 7) & 0x7F) | 0x80,
                ((value >> 14) & 0x7F) | 0x80,
                value >> 21,
            )
        )
    if value < 0x800000000:  # epoch seconds until the year 3058
        return bytes(
            (
                (value & 0x7F) | 0x80,
                ((value >> 7) & 0x7F) | 0x80,
                ((value >> 14) & 0x7F) | 0x80,
                ((value >> 21) & 0x7F) | 0x80,
                value >> 28,
            )
        )
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _length_delimited(tag: bytes, payload: bytes) -> bytes:
    return tag + _varint(len(payload)) + payload


# Timestamp.nanos (field 2) of each whole millisecond, encoded once.
_NANOS = (b"", *(b"\x10" + _varint(millis * 1_000_000) for millis in range(1, 1000)))


def _timestamp(tag: bytes, epoch_ms: int) -> bytes:
    """A google.protobuf.Timestamp field (zero seconds or nanos are left out)."""
    seconds, millis = divmod(epoch_ms, 1000)
    body = (b"\x08" + _varint(seconds) if seconds else b"") + _NANOS[millis]
    return tag + _SMALL_VARINTS[len(body)] + body


class ObservationEncoder:
    """Encodes `ValidObservation`s of one feature set as `driftloop.v1.Observation` bytes."""

    def __init__(self, featureset: FeatureSet) -> None:
        self._feature_set = _length_delimited(_FEATURE_SET, featureset.name.encode())
        # A map entry is `key` (field 1) then `value` (field 2, a FeatureValue);
        # everything up to the value's own bytes is the same for every event.
        self._heads: dict[str, tuple[bytes, int]] = {}
        self._float_prefixes: dict[str, bytes] = {}
        for name in featureset.fields:
            key = _length_delimited(b"\x0a", name.encode())
            self._heads[name] = (key + _MAP_VALUE, len(key) + 1)
            # float entries have a fixed size: key, value tag, length 9, tag 0x09, 8 bytes.
            self._float_prefixes[name] = (
                _VALUES + _varint(len(key) + 11) + key + _MAP_VALUE + b"\x09" + _FLOAT_VALUE
            )
        self._ingested_ms = -1
        self._ingested_suffix = b""

    def encode(self, event: ValidObservation, *, ingested_at_ms: int) -> bytes:
        if ingested_at_ms != self._ingested_ms:
            self._ingested_ms = ingested_at_ms
            self._ingested_suffix = _timestamp(_INGESTED_AT, ingested_at_ms) + self._feature_set
        event_id = event.event_id.encode()
        entity_id = event.entity_id.encode()
        parts = [
            _EVENT_ID,
            _varint(len(event_id)),
            event_id,
            _ENTITY_ID,
            _varint(len(entity_id)),
            entity_id,
            _timestamp(_EVENT_TIME, event.event_time_ms),
        ]
        append = parts.append
        for name, value in event.values.items():
            kind = type(value)
            if kind is float:
                append(self._float_prefixes[name])
                append(_pack_double(value))  # type: ignore[arg-type]
                continue
            if kind is str:
                text = value.encode()  # type: ignore[union-attr]
                feature = _STRING_VALUE + _varint(len(text)) + text
            else:  # int, or bool as 0/1
                feature = _INT_VALUE + _varint(int(value))
            head, head_size = self._heads[name]
            size = len(feature)
            append(_VALUES)
            append(_varint(head_size + len(_varint(size)) + size))
            append(head)
            append(_varint(size))
            append(feature)
        if event.label is not None:
            append(_LABEL)
            append(_varint(event.label))
        append(self._ingested_suffix)
        return b"".join(parts)

    def encode_with_digest(
        self, event: ValidObservation, *, ingested_at_ms: int
    ) -> tuple[bytes, bytes]:
        """The encoded observation, and a digest of its content: every byte but the
        ingestion time and feature-set name at its end. The same event sent again
        has the same digest (values as validated: `12` and `12.0` of a float field
        agree); one with another entity, time, value or label has another. Map
        entries follow the feature set's field order, so reordering its fields
        changes the digests of events accepted before."""
        encoded = self.encode(event, ingested_at_ms=ingested_at_ms)
        content = memoryview(encoded)[: len(encoded) - len(self._ingested_suffix)]
        return encoded, hashlib.blake2b(content, digest_size=16).digest()


def label_message(
    *,
    event_id: str,
    entity_id: str,
    label: int,
    event_time_ms: int,
    feature_set: str,
    ingested_at_ms: int,
) -> events_pb2.Label:
    message = events_pb2.Label(
        event_id=event_id, entity_id=entity_id, label=label, feature_set=feature_set
    )
    message.event_time.FromMilliseconds(event_time_ms)
    message.ingested_at.FromMilliseconds(ingested_at_ms)
    return message


def observation_message(
    event: ValidObservation, *, feature_set: str, ingested_at_ms: int
) -> events_pb2.Observation:
    """The same observation through the protobuf API: the reference the encoder
    must match, and the readable form for callers that want a message."""
    message = events_pb2.Observation(
        event_id=event.event_id, entity_id=event.entity_id, feature_set=feature_set
    )
    message.event_time.FromMilliseconds(event.event_time_ms)
    message.ingested_at.FromMilliseconds(ingested_at_ms)
    values = message.values
    for name, value in event.values.items():
        if isinstance(value, float):
            values[name].float_value = value
        elif isinstance(value, str):
            values[name].string_value = value
        else:  # int, or bool as 0/1
            values[name].int_value = int(value)
    if event.label is not None:
        message.label = event.label
    return message


def held_label_deadletter(
    *,
    event_id: str,
    payload: bytes,
    origin: Origin | None,
    reason: str,
    rule: str,
    failed_at_ms: int,
) -> events_pb2.DeadLetter:
    """The dead letter of a held label whose observation never came, or came
    with another label of its own: its raw payload and, when it was read from
    Kafka, where from (topic, partition, offset as `RawEvents` names the origin)."""
    letter = events_pb2.DeadLetter(
        reason=reason,
        field=EVENT_ID,
        rule=rule,
        payload=payload,
        service="ingestion",
        event_id=event_id,
    )
    if origin is not None and len(origin) >= 3:
        letter.source_topic = str(origin[0])
        letter.source_partition = int(origin[1])
        letter.source_offset = int(origin[2])
    letter.failed_at.FromMilliseconds(failed_at_ms)
    return letter
