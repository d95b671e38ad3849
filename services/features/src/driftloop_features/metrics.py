"""The feature store's Prometheus metrics: stream outcomes and the offline sink's writes."""

from __future__ import annotations

from prometheus_client import Counter

EVENTS = Counter(
    "driftloop_features_events_total",
    "Records of events.valid handled by the feature store, by outcome.",
    ["outcome"],
)
WRITTEN = Counter(
    "driftloop_features_offline_records_total",
    "Records of features.offline handled by the offline sink, by outcome.",
    ["outcome"],
)
FLUSHES = Counter(
    "driftloop_features_offline_flushes_total",
    "Parquet flushes of the offline sink (each followed by an offset commit).",
)
