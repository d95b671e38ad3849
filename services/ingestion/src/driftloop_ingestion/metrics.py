"""Ingestion's Prometheus metrics: events by way in and outcome, rejections by rule.

The Kafka consumer's own counters (records consumed, lag) are the shared ones
of `driftloop_core.kafka`.
"""

from __future__ import annotations

from prometheus_client import Counter

EVENTS = Counter(
    "driftloop_ingestion_events_total",
    "Raw events ingested, by way in and outcome (published, duplicate, rejected).",
    ["source", "outcome"],
)
REJECTIONS = Counter(
    "driftloop_ingestion_rejections_total",
    "Rejected events by the first rule they broke.",
    ["source", "rule"],
)
