"""Prometheus metrics of the inference service (exposed by issue 7's /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

PREDICTIONS_DROPPED = Counter(
    "driftloop_inference_predictions_dropped_total",
    "Predictions not published to the predictions topic (buffer full or publish failed; "
    "for a rollout candidate's shadow answer also shadow_busy and shadow_failed).",
    ["reason"],
)
MODEL_LOAD_FAILURES = Counter(
    "driftloop_inference_model_load_failures_total",
    "Model versions that could not be loaded (download, digest, ONNX, warm-up).",
    ["model", "stage"],
)
MODEL_LOADS = Counter(
    "driftloop_inference_model_loads_total",
    "Model versions loaded and swapped in.",
    ["model"],
)
BATCH_SIZE = Histogram(
    "driftloop_inference_batch_size",
    "Rows per onnxruntime run.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
QUEUE_SECONDS = Histogram(
    "driftloop_inference_queue_seconds",
    "Time a request waited in the batching queue before its run started.",
    buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
)
REJECTED = Counter(
    "driftloop_inference_rejected_total",
    "Requests refused before running: queue full or deadline already past.",
    ["reason"],
)
PROMOTION_CATCH_UPS = Counter(
    "driftloop_inference_promotion_catch_ups_total",
    "Champion checks after the promotions consumer rejoined its group, by outcome: "
    "loaded (a promotion it missed), current, superseded (a promotion arrived first), "
    "no_champion, load_failed, registry_unavailable (asked again after retry_interval_s).",
    ["model", "outcome"],
)
MODEL_VERSION = Gauge(
    "driftloop_inference_model_version_info",
    "1 for the version being served, 0 for one kept loaded for rollback.",
    ["model", "version", "sha256"],
)
FEATURE_LOOKUP_FAILURES = Counter(
    "driftloop_inference_feature_lookup_failures_total",
    "Online feature lookups that failed or missed their deadline.",
    ["code"],
)
ARENA_LEADER = Gauge(
    "driftloop_inference_arena_leader_info",
    "1 for who answers Predict now: the champion (v<version>) or an online learner "
    "(online:<name>).",
    ["model", "leader"],
)
ARENA_LEADER_CHANGES = Counter(
    "driftloop_inference_arena_leader_changes_total",
    "Times the arena handed Predict to another contender.",
    ["model"],
)
ARENA_LABELS_LEARNT = Counter(
    "driftloop_inference_arena_labels_learnt_total",
    "Labels the arena scored its contenders on and its online learners learnt.",
    ["model"],
)
ARENA_ACCURACY = Gauge(
    "driftloop_inference_arena_accuracy",
    "A contender's accuracy over its last arena_window scored events.",
    ["model", "contender"],
)
SHADOW_PREDICTIONS = Counter(
    "driftloop_inference_shadow_predictions_total",
    "A rollout candidate's answers published as shadow predictions (never returned "
    "to the caller), by candidate version.",
    ["model", "version"],
)
SHADOW_SECONDS = Histogram(
    "driftloop_inference_shadow_seconds",
    "A rollout candidate's own scoring time per shadow prediction: its wait in the "
    "batching queue and its run, after the caller was answered.",
    ["model"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
SHADOW_LOAD_FAILURES = Counter(
    "driftloop_inference_shadow_load_failures_total",
    "Rollout candidates that could not be loaded for shadow scoring (download, digest, "
    "ONNX, warm-up, signature); the champion serves as before.",
    ["model", "stage"],
)
SHADOW_CANDIDATE = Gauge(
    "driftloop_inference_shadow_candidate_info",
    "1 for the rollout candidate loaded and scored in the champion's shadow.",
    ["model", "version", "rollout_id"],
)
