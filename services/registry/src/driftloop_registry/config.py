"""The registry's own knobs, read from `DRIFTLOOP_REGISTRY_*` environment variables.

They sit beside the shared `Settings`: no other service needs the registry's
database URL or its promotion margin. `DRIFTLOOP_REGISTRY_DATABASE_URL` takes any
SQLAlchemy URL (`postgresql+psycopg://...` in production); unset, the metadata
lives in SQLite under `DRIFTLOOP_HOME/registry/`.
"""

from __future__ import annotations

from typing import Any

from driftloop_core.kafka.topics import Topics
from driftloop_core.settings import Settings
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from driftloop_registry.domain import GatePolicy


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
    group_id: str = "driftloop-registry"
    source_topic: str = Topics.MODELS_TRAINED
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
    def gate(self) -> GatePolicy:
        return GatePolicy(self.primary_metric, self.min_improvement, self.higher_is_better)


def load_registry_settings(**overrides: Any) -> RegistrySettings:
    """Read the environment once; keyword overrides win (tests)."""
    return RegistrySettings(**overrides)
