"""The trainer's Prometheus metrics: how long runs and their stages take, how they end."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

# Training stages take seconds to minutes, not milliseconds.
_STAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

STAGE_SECONDS = Histogram(
    "driftloop_trainer_stage_duration_seconds",
    "Duration of each training stage, by stage and outcome.",
    ["stage", "outcome"],
    buckets=_STAGE_BUCKETS,
)
RUN_SECONDS = Histogram(
    "driftloop_trainer_run_duration_seconds",
    "Duration of a whole training run, by model and outcome.",
    ["model", "outcome"],
    buckets=_STAGE_BUCKETS,
)
RUNS = Counter(
    "driftloop_trainer_runs_total",
    "Training runs by model, trigger and outcome (trained, failed, replayed).",
    ["model", "trigger", "outcome"],
)
