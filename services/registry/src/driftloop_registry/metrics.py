"""The registry's Prometheus metrics: versions registered, alias moves, rollouts."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

VERSIONS = Counter(
    "driftloop_registry_versions_total",
    "Model versions registered, by model and the status the gate gave them.",
    ["model", "status"],
)
PROMOTIONS = Counter(
    "driftloop_registry_promotions_total",
    "Champion alias changes, by model and kind (promote, rollback).",
    ["model", "kind"],
)
CHAMPION_VERSION = Gauge(
    "driftloop_registry_champion_version",
    "The version holding the champion alias, by model.",
    ["model"],
)
ROLLOUTS = Counter(
    "driftloop_registry_rollouts_total",
    "Rollout steps, by model, kind (trial, watch) and stage: `shadow` when one "
    "starts, then how it ended (promoted, rejected, superseded, rolled_back, kept).",
    ["model", "kind", "stage"],
)
ROLLOUT_OPEN = Gauge(
    "driftloop_registry_rollout_open",
    "1 while a rollout of the model is open, by kind and candidate version.",
    ["model", "kind", "candidate"],
)
