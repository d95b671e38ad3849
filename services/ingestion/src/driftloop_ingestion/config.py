"""Ingestion's own knobs, read from `DRIFTLOOP_INGESTION_*` environment variables.

They sit beside the shared `Settings` rather than inside it: no other service
needs to know how long ingestion remembers event ids. Durations take the same
forms as the feature set (`24h`, `10m`, `30s`, or a number of seconds).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from driftloop_core.featureset import Duration
from driftloop_core.kafka.topics import Topics
from driftloop_core.settings import Settings
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from driftloop_ingestion.decoding import DEFAULT_MAX_EVENT_BYTES


class IngestionSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DRIFTLOOP_INGESTION_", extra="ignore")

    # An event id seen again within this window is acknowledged as a duplicate
    # and not published again.
    dedup_window: Duration = timedelta(hours=24)
    # A late label may reference an observation accepted at most this long ago.
    label_horizon: Duration = timedelta(days=7)
    # A label whose observation has not arrived is held this long, then
    # dead-lettered (rule "label_unmatched"); at most `max_held_labels` wait at
    # once, beyond which a label is rejected (rule "held_labels_full").
    label_wait: Duration = timedelta(hours=24)
    max_held_labels: int = Field(default=1_000_000, ge=0)
    # The latest event time accepted is the wall clock plus this (a producer's
    # clock skew); a later one is rejected with rule "future". Unset: the feature
    # set's `grace`, the lateness the feature store tolerates, so that no event
    # it is handed can move an entity's clock past the wall clock by more.
    max_future: Duration | None = None
    # How often held labels past the wait are looked for.
    label_expiry_interval: Duration = timedelta(minutes=1)
    # How often rows older than both windows are deleted from the event index.
    prune_interval: Duration = timedelta(minutes=10)
    # Kafka side: the consumer group and the topics it reads and writes.
    group_id: str = "driftloop-ingestion"
    source_topic: str = Topics.RAW
    deadletter_topic: str = Topics.DEADLETTER
    # Records handled (validated, published, indexed, committed) as one batch.
    kafka_batch_size: int = Field(default=5000, ge=1)
    # Bytes fetched per partition and per request; large fetches keep the
    # validator busy instead of waiting on round trips.
    fetch_max_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    max_partition_fetch_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    # Producer tuning for events.valid: one request carries many records.
    producer_max_batch_bytes: int = Field(default=1024 * 1024, ge=16 * 1024)
    producer_linger_ms: int = Field(default=5, ge=0)
    # gRPC IngestStream: events gathered before they are validated and
    # published together, and the longest an event waits for its batch to fill.
    stream_batch_size: int = Field(default=1000, ge=1)
    stream_flush_interval: Duration = timedelta(milliseconds=200)
    # The longest raw event accepted, as JSON text on events.raw or in a gRPC
    # request's `json` field (a structured `RawEvent` is bounded by the gRPC
    # message size); a longer one is rejected with rule "size", and on
    # events.raw dead-lettered cut to this length.
    max_event_bytes: int = Field(default=DEFAULT_MAX_EVENT_BYTES, ge=64)

    def index_path(self, settings: Settings) -> Path:
        """Where the event index lives: it must survive restarts, so not ephemeral."""
        return settings.home / "ingestion" / "events.db"

    @property
    def retention(self) -> timedelta:
        """How long an index row is kept: long enough for both dedup and label joins."""
        return max(self.dedup_window, self.label_horizon)


def load_ingestion_settings(**overrides: Any) -> IngestionSettings:
    """Read the environment once; keyword overrides win (tests, the load test)."""
    return IngestionSettings(**overrides)
