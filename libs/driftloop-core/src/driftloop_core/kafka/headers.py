"""CloudEvents Kafka-binding headers and W3C trace context on every record.

Every Driftloop record carries `ce_specversion`, `ce_id`, `ce_type`, `ce_source`,
`ce_time` and `content-type` (binary content mode of the CloudEvents Kafka
binding), plus `traceparent`/`tracestate`, so a consumer knows what it holds
without decoding it and one trace runs from an event to what it caused.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from opentelemetry import propagate
from opentelemetry.context import Context

SPECVERSION = "1.0"
PROTOBUF = "application/protobuf"
JSON = "application/json"

Headers = list[tuple[str, bytes]]

# On a `Label` record: "1" when the label replaces one given before (the
# producer sent `"correction": true`); ingestion writes it, drift reads it.
LABEL_CORRECTION_HEADER = "label_correction"


@dataclass(frozen=True)
class EventHeaders:
    """The CloudEvents attributes and trace context of one record."""

    id: str
    type: str
    source: str
    time: datetime | None = None
    specversion: str = SPECVERSION
    content_type: str = PROTOBUF
    traceparent: str | None = None
    tracestate: str | None = None
    extra: Mapping[str, str] = field(default_factory=dict)

    def to_kafka(self) -> Headers:
        headers: Headers = [
            ("ce_specversion", self.specversion.encode()),
            ("ce_id", self.id.encode()),
            ("ce_type", self.type.encode()),
            ("ce_source", self.source.encode()),
            ("content-type", self.content_type.encode()),
        ]
        if self.time is not None:
            headers.append(("ce_time", _rfc3339(self.time).encode()))
        if self.traceparent:
            headers.append(("traceparent", self.traceparent.encode()))
        if self.tracestate:
            headers.append(("tracestate", self.tracestate.encode()))
        headers.extend((key, value.encode()) for key, value in self.extra.items())
        return headers

    def trace_context(self) -> Context:
        """The producer's span context, to parent (or link) the consumer's span."""
        carrier = {}
        if self.traceparent:
            carrier["traceparent"] = self.traceparent
        if self.tracestate:
            carrier["tracestate"] = self.tracestate
        return propagate.extract(carrier)


def new_event_id() -> str:
    return uuid.uuid4().hex


def make_headers(
    ce_type: str,
    source: str,
    *,
    event_id: str | None = None,
    time: datetime | None = None,
    content_type: str = PROTOBUF,
    context: Context | None = None,
    extra: Mapping[str, str] | None = None,
) -> EventHeaders:
    """Headers for a new record, carrying the trace context that is current (or given)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    return EventHeaders(
        id=event_id or new_event_id(),
        type=ce_type,
        source=source,
        time=time or datetime.now(UTC),
        content_type=content_type,
        traceparent=carrier.get("traceparent"),
        tracestate=carrier.get("tracestate"),
        extra=dict(extra or {}),
    )


_KNOWN = {
    "ce_specversion",
    "ce_id",
    "ce_type",
    "ce_source",
    "ce_time",
    "content-type",
    "traceparent",
    "tracestate",
}


def parse_headers(
    raw: Sequence[tuple[str, bytes]] | Iterable[tuple[str, bytes]] | None,
) -> EventHeaders:
    """Read the headers of a consumed record. Records from plain producers (no
    CloudEvents headers, e.g. JSON lines on `events.raw`) get empty attributes."""
    values: dict[str, str] = {}
    for key, value in raw or ():
        values[key] = value.decode("utf-8", errors="replace") if value is not None else ""
    time = None
    if "ce_time" in values:
        try:
            time = datetime.fromisoformat(values["ce_time"].replace("Z", "+00:00"))
        except ValueError:
            time = None
    return EventHeaders(
        id=values.get("ce_id", ""),
        type=values.get("ce_type", ""),
        source=values.get("ce_source", ""),
        time=time,
        specversion=values.get("ce_specversion", SPECVERSION),
        content_type=values.get("content-type", ""),
        traceparent=values.get("traceparent"),
        tracestate=values.get("tracestate"),
        extra={k: v for k, v in values.items() if k not in _KNOWN},
    )


def _rfc3339(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
