"""The drift service's own knobs, read from `DRIFTLOOP_DRIFT_*` environment variables.

Detector thresholds and windows belong to the feature set (its `drift:`
section), since they follow the data; what is here is how the service runs:
the join's time-to-live, the retrain policy and where state is kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from driftloop_core.featureset import FeatureSet
from driftloop_core.kafka.topics import Topics
from driftloop_core.settings import Settings
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from driftloop_drift.domain.policy import PolicyConfig
from driftloop_drift.handlers import EngineConfig


class DriftSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DRIFTLOOP_DRIFT_", extra="ignore")

    # How long a prediction waits for its label, or a label for its prediction.
    pending_ttl_s: float = Field(default=3600.0, gt=0)
    # Most predictions (and, apart, labels) waiting at once; the oldest go first.
    max_pending: int = Field(default=100_000, ge=1)
    # Labelled event ids remembered for deduplication and post-drift counts.
    label_memory: int = Field(default=100_000, ge=1)
    # Inputs a detector keeps for its rebuild before it rebases on the newer half.
    history_limit: int = Field(default=20_000, ge=100)
    # No new training request for this long after the last one.
    cooldown_s: float = Field(default=120.0, ge=0)
    # A request with no outcome after this long no longer blocks the next one.
    in_flight_timeout_s: float = Field(default=900.0, gt=0)
    # Labelled events needed before a first model is asked for.
    bootstrap_min_labels: int = Field(default=500, ge=1)
    # Rows asked for when there are too few since the change point, and for bootstrap.
    last_n: int = Field(default=2000, ge=1)
    # Labelled events since the change point needed to train on them alone.
    min_post_drift_rows: int = Field(default=300, ge=1)
    # A drift waits this long for them, then asks for the last `last_n` rows instead.
    post_drift_wait_s: float = Field(default=900.0, ge=0)
    # Whether a data drift with no rise in the error stream still asks for training.
    data_drift_retrains: bool = False
    # State is written at least this often while records flow (and before any publish).
    snapshot_interval_s: float = Field(default=1.0, gt=0)
    # SQLite file of the state; default DRIFTLOOP_HOME/ephemeral/drift/<model>.sqlite.
    state_path: Path | None = None
    registry_timeout_s: float = Field(default=5.0, gt=0)
    # Service time follows Kafka record timestamps, which whoever writes a topic
    # sets: one further ahead of the wall clock than this counts as the wall
    # clock plus this. Unset: the feature set's `grace` (as ingestion's allowance).
    max_future_s: float | None = Field(default=None, ge=0)
    predictions_topic: str = Topics.PREDICTIONS
    labels_topic: str = Topics.VALID
    promoted_topic: str = Topics.MODELS_PROMOTED
    registered_topic: str = Topics.MODELS_REGISTERED
    failed_topic: str = Topics.TRAINING_FAILED
    # ModelRolloutStarted / ModelRolloutEnded in; drift's RolloutJudged goes to
    # the design's models.rollouts whatever this says (as its other events do).
    rollouts_topic: str = Topics.MODELS_ROLLOUTS
    deadletter_topic: str = Topics.DEADLETTER

    def state_file(self, settings: Settings, model: str) -> Path:
        # Under ephemeral/: the state mirrors broker offsets, and `driftloop up`
        # clears that folder when it starts a fresh in-memory broker.
        return self.state_path or settings.ephemeral_dir / "drift" / f"{model}.sqlite"

    def max_future_ms(self, featureset: FeatureSet) -> int:
        """How far a record's timestamp may run ahead of the wall clock, in ms."""
        if self.max_future_s is None:
            return int(featureset.grace.total_seconds() * 1000)
        return int(self.max_future_s * 1000)

    def engine_config(self) -> EngineConfig:
        return EngineConfig(
            policy=PolicyConfig(
                cooldown_ms=int(self.cooldown_s * 1000),
                in_flight_timeout_ms=int(self.in_flight_timeout_s * 1000),
                bootstrap_min_labels=self.bootstrap_min_labels,
                last_n=self.last_n,
                min_post_drift_rows=self.min_post_drift_rows,
                post_drift_wait_ms=int(self.post_drift_wait_s * 1000),
                data_drift_retrains=self.data_drift_retrains,
            ),
            pending_ttl_ms=int(self.pending_ttl_s * 1000),
            max_pending=self.max_pending,
            label_memory=self.label_memory,
            history_limit=self.history_limit,
        )

    @property
    def source_topics(self) -> tuple[str, ...]:
        return (
            self.predictions_topic,
            self.labels_topic,
            self.promoted_topic,
            self.registered_topic,
            self.failed_topic,
            self.rollouts_topic,
        )


def load_drift_settings(**overrides: Any) -> DriftSettings:
    """Read the environment once; keyword overrides win (tests)."""
    return DriftSettings(**overrides)
