"""Ingestion's Prometheus metrics: events by way in and outcome, rejections by rule,
labels held for their observations and those that waited in vain.

The Kafka consumer's own counters (records consumed, lag) are the shared ones
of `driftloop_core.kafka`.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

EVENTS = Counter(
    "driftloop_ingestion_events_total",
    "Raw events ingested, by way in and outcome (published, held, duplicate, rejected).",
    ["source", "outcome"],
)
REJECTIONS = Counter(
    "driftloop_ingestion_rejections_total",
    "Rejected events by the first rule they broke.",
    ["source", "rule"],
)
HELD_LABELS = Gauge(
    "driftloop_ingestion_held_labels",
    "Labels waiting for their observation to arrive.",
)
LABELS_EXPIRED = Counter(
    "driftloop_ingestion_labels_expired_total",
    "Held labels dead-lettered because their observation did not arrive within the wait.",
)
