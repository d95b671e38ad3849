"""The registry's own knobs, read from `DRIFTLOOP_REGISTRY_*` environment variables.

They sit beside the shared `Settings`: no other service needs the registry's
database URL or its promotion margin. `DRIFTLOOP_REGISTRY_DATABASE_URL` takes any
SQLAlchemy URL (`postgresql+psycopg://...` in production); unset, the metadata
lives in SQLite under `DRIFTLOOP_HOME/registry/`.
"""

from __future__ import annotations

from typing import Any, Literal

from driftloop_core.kafka.topics import Topics
from driftloop_core.settings import Settings
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from driftloop_registry.domain import GatePolicy, RolloutPolicy


class RegistrySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DRIFTLOOP_REGISTRY_", extra="ignore")

    database_url: str | None = None
    # The gate compares this metric, measured by the trainer on the same rows
    # for the challenger and the champion.
    primary_metric: str = "roc_auc"
    # How much better the challenger must be to take the champion alias.
    min_improvement: float = Field(default=0.005, ge=0)
    # False for metrics where lower is better (log_loss, calibration_error).
    higher_is_better: bool = True
    # `off`: a candidate the gate admits takes the champion alias at once.
    # `shadow`: it starts a rollout instead; inference scores live traffic
    # with it beside the champion, drift judges the labelled outcomes, and the
    # registry promotes or rejects it on that verdict.
    rollout: Literal["off", "shadow"] = "off"
    # The live judge's rule (services/drift/README.md, "Judging a rollout").
    rollout_min_paired: int = Field(default=200, ge=1)
    rollout_max_duration_s: float = Field(default=3600.0, gt=0)
    rollout_alpha: float = Field(default=0.05, gt=0, lt=0.5)
    rollout_beta: float = Field(default=0.1, gt=0, lt=0.5)
    rollout_effect: float = Field(default=0.15, gt=0, lt=0.5)
    # A trial's candidate whose shadow p99 is above this is not promoted; 0: none.
    rollout_latency_budget_ms: float = Field(default=0.0, ge=0)
    # How long the previous champion shadows one a rollout promoted, ready to
    # take the alias back if it does better live; 0: no watch.
    rollout_watch_s: float = Field(default=1800.0, ge=0)
    group_id: str = "driftloop-registry"
    source_topic: str = Topics.MODELS_TRAINED
    rollouts_topic: str = Topics.MODELS_ROLLOUTS
    deadletter_topic: str = Topics.DEADLETTER
    # Bytes per DownloadArtifact chunk when the caller does not choose; kept
    # within 64 KiB..4 MiB like a caller's choice (entrypoints.grpc.MIN_CHUNK).
    chunk_size: int = Field(default=1024 * 1024, ge=1024)

    def url_for(self, settings: Settings) -> str:
        """The database URL: the configured one, else SQLite under DRIFTLOOP_HOME."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{settings.home / 'registry' / 'registry.db'}"

    @property
    def rollout_policy(self) -> RolloutPolicy | None:
        if self.rollout == "off":
            return None
        return RolloutPolicy(
            min_paired=self.rollout_min_paired,
            max_duration_s=self.rollout_max_duration_s,
            alpha=self.rollout_alpha,
            beta=self.rollout_beta,
            effect=self.rollout_effect,
            latency_budget_ms=self.rollout_latency_budget_ms,
            watch_s=self.rollout_watch_s,
        )

    @property
    def gate(self) -> GatePolicy:
        return GatePolicy(self.primary_metric, self.min_improvement, self.higher_is_better)


def load_registry_settings(**overrides: Any) -> RegistrySettings:
    """Read the environment once; keyword overrides win (tests)."""
    return RegistrySettings(**overrides)
