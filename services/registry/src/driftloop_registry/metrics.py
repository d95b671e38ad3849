"""The registry's Prometheus metrics: versions registered and alias moves."""

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
