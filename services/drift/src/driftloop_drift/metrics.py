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
NON_FINITE = Counter(
    "driftloop_drift_non_finite_values_total",
    "Feature values of watched predictions that were NaN or infinite, kept from every detector.",
    ["model", "feature"],
)
RECORD_TIME_CLAMPED = Counter(
    "driftloop_drift_record_times_clamped_total",
    "Records whose Kafka timestamp lay further ahead of the wall clock than allowed; "
    "service time took the wall clock plus the allowance instead.",
    ["model"],
)
SUPPRESSED = Counter(
    "driftloop_drift_requests_suppressed_total",
    "Detections that asked for no training: one in flight, or cooling down.",
    ["model"],
)
ROLLOUTS_OPEN = Gauge(
    "driftloop_drift_rollouts_open",
    "Rollouts being judged: started, neither judged nor ended.",
    ["model"],
)
ROLLOUT_PAIRED = Counter(
    "driftloop_drift_rollout_paired_events_total",
    "Labelled events both the champion and a rollout's candidate scored, counted by the judge.",
    ["model"],
)
ROLLOUT_VERDICTS = Counter(
    "driftloop_drift_rollout_verdicts_total",
    "Rollouts judged, by verdict (promote, reject) and the rule that decided "
    "(better, worse, not_better, time_ran_out, over_latency_budget).",
    ["model", "verdict", "rule"],
)
