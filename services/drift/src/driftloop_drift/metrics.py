"""The drift service's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

DETECTIONS = Counter(
    "driftloop_drift_detections_total",
    "Drift detections published, by model, kind (performance, data) and detector.",
    ["model", "kind", "detector"],
)
STATISTIC = Gauge(
    "driftloop_drift_statistic",
    "Latest statistic of each detector: error rate (adwin, ddm), PSI, KSWIN p-value.",
    ["model", "feature", "detector"],
)
TRAINING_REQUESTS = Counter(
    "driftloop_drift_training_requests_total",
    "Training requests published, by model and trigger (bootstrap, drift).",
    ["model", "trigger"],
)
SUPPRESSED = Counter(
    "driftloop_drift_requests_suppressed_total",
    "Detections that asked for no training: one in flight, or cooling down.",
    ["model"],
)
