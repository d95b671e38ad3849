"""The inference service's own knobs, read from `DRIFTLOOP_INFERENCE_*` variables.

They sit beside the shared `Settings` (endpoints, Kafka, gRPC limits); see the
service README for what each one does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from driftloop_core.kafka.topics import Topics
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from driftloop_inference.online.arena import ArenaConfig
from driftloop_inference.online.learners import LEARNERS

MissingPolicy = Literal["default", "fail"]
LookupFailurePolicy = Literal["unavailable", "defaults"]
_ARENA = ArenaConfig()


class InferenceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DRIFTLOOP_INFERENCE_", extra="ignore")

    # The served model; empty means the feature set's name.
    model_name: str = ""
    # Serve this ONNX file (version `model_file_version`) instead of asking the
    # registry at start; promotions still replace it when `follow_promotions`.
    model_file: Path | None = None
    model_file_version: int = Field(default=1, ge=1)
    # Dynamic batching: rows merged into one onnxruntime run, and how long the
    # first queued request may wait for others (0: take only what is queued).
    batching: bool = True
    max_batch_size: int = Field(default=64, ge=1)
    max_queue_delay_us: int = Field(default=0, ge=0)
    # Models whose largest batch (max_batch_size rows, timed at load) runs within
    # this many microseconds run on the event loop; slower ones in a worker
    # thread (0: always a worker thread).
    inline_run_us: int = Field(default=1000, ge=0)
    # Requests waiting for a batch; beyond it RESOURCE_EXHAUSTED at once.
    queue_capacity: int = Field(default=1024, ge=1)
    # One ModelInfer request at most: rows (its inputs' variable first dimension)
    # and bytes of tensor data (raw contents as sent, typed values at their
    # datatype's size, BYTES elements at 4 bytes plus their length). Beyond either
    # the request is refused with INVALID_ARGUMENT naming the setting, before its
    # values are decoded. 4,096 rows of the payments model take about 90 KB.
    max_request_rows: int = Field(default=4096, ge=1)
    max_request_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    # Large ModelInfer requests (more than 16 KiB) are decoded, run and encoded
    # one at a time in a worker thread of their own, never on the event loop nor
    # in the batches' thread (a request of more rows than a batch runs there
    # too); beyond this many waiting, RESOURCE_EXHAUSTED at once.
    large_queue_capacity: int = Field(default=8, ge=1)
    # onnxruntime session threads (small models: 1 and 1 avoid thread hand-offs).
    intra_op_threads: int = Field(default=1, ge=0)
    inter_op_threads: int = Field(default=1, ge=0)
    # Server processes sharing the port with SO_REUSEPORT (Linux).
    workers: int = Field(default=1, ge=1)
    reuse_port: bool = False
    # Predict: feature store lookup deadline and the missing-feature policy.
    feature_lookup_timeout_s: float = Field(default=0.25, gt=0)
    # Where Predict's online features come from: `events` (the states counted
    # in this process from `events.valid`, as the store counts them: the fast
    # path, every entity in every process), `remote` (one GetOnlineFeatures
    # call per Predict, one copy of the states) or `replica` (the feature
    # store's entity changelog read into this process; it trails the store's
    # table under a steady stream). A replica answers over gRPC until it has
    # caught up (adapters/feature_replica.py).
    features_source: Literal["replica", "events", "remote"] = "events"
    features_changelog: str = "driftloop-features-entities-changelog"
    features_events_topic: str = Topics.VALID
    # How often a replica asks whether the broker is still the one it read (a
    # restarted embedded broker is empty: the replica starts over).
    features_broker_check_s: float = Field(default=2.0, gt=0)
    # Decoded entity states the replica keeps beside the encoded ones.
    features_decoded_cache: int = Field(default=10_000, ge=1)
    missing_features: MissingPolicy = "default"
    # When the lookup itself fails (feature store down, deadline passed):
    # `unavailable` fails the call with UNAVAILABLE; `defaults` treats the entity's
    # online features as missing, so `missing_features` decides, and the response
    # names them in `defaults_applied`.
    on_lookup_failure: LookupFailurePolicy = "unavailable"
    # Per-feature defaults (JSON object in the environment); a feature without one
    # takes NaN (numbers) or "" (categories), what the trainer writes for a missing value.
    feature_defaults: dict[str, float | str] = Field(default_factory=dict)
    # Predictions waiting to be published; beyond it they are dropped and counted.
    prediction_buffer: int = Field(default=10_000, ge=1)
    predictions_topic: str = Topics.PREDICTIONS
    promotions_topic: str = Topics.MODELS_PROMOTED
    # Kafka at all (predictions out, promotions in); off for a bare OIP server.
    events: bool = True
    follow_promotions: bool = True
    # Rollouts (rollouts.py, shadow.py): follow `rollouts_topic` and, while a
    # rollout of the model is open, score every Predict with its candidate too,
    # after the reply, publishing the answer as a shadow prediction. Off: no
    # candidate is loaded and Predict publishes the champion's answers only.
    # Needs `events`.
    shadow: bool = True
    rollouts_topic: str = Topics.MODELS_ROLLOUTS
    # Group id prefix; a uuid is appended so every replica sees every promotion.
    group_prefix: str = "driftloop-inference"
    # Registry calls at start and on promotions.
    registry_timeout_s: float = Field(default=30.0, gt=0)
    # Seconds between attempts to fetch the champion while none is loaded.
    retry_interval_s: float = Field(default=2.0, gt=0)
    # The online arena (online/arena.py): these river learners run beside the
    # champion and answer Predict while their recent accuracy is ahead, and
    # before any version exists. In the environment a comma-separated list or
    # a JSON array; empty turns the arena off (champion only). It needs the
    # predictions and labels topics, so it is off too without `events`.
    online_learners: Annotated[tuple[str, ...], NoDecode] = LEARNERS
    # Scored events a contender's recent accuracy covers; scored events before
    # it may answer; predictions and labels waiting for their other half.
    arena_window: int = Field(default=_ARENA.window, ge=1)
    arena_min_scored: int = Field(default=_ARENA.min_scored, ge=1)
    arena_max_pending: int = Field(default=_ARENA.max_pending, ge=1)
    # Where labels arrive (observations carrying one, and late labels), as drift reads them.
    labels_topic: str = Topics.VALID

    @field_validator("online_learners", mode="before")
    @classmethod
    def _learner_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return tuple(json.loads(text))
            return tuple(name.strip() for name in text.split(",") if name.strip())
        return value

    @field_validator("online_learners")
    @classmethod
    def _known_learners(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [name for name in value if name not in LEARNERS]
        if unknown:
            raise ValueError(
                f"unknown online learners {', '.join(unknown)}: expected some of "
                f"{', '.join(LEARNERS)}"
            )
        if len(set(value)) != len(value):
            raise ValueError("must not repeat a learner")
        return value

    @property
    def arena_on(self) -> bool:
        return bool(self.online_learners) and self.events

    @property
    def follows_rollouts(self) -> bool:
        return self.shadow and self.events

    @property
    def arena_topics(self) -> tuple[str, str]:
        """What the arena's feed reads: served predictions, then labels."""
        return (self.predictions_topic, self.labels_topic)

    def arena_config(self) -> ArenaConfig:
        return ArenaConfig(
            learners=self.online_learners,
            window=self.arena_window,
            min_scored=self.arena_min_scored,
            max_pending=self.arena_max_pending,
        )


def load_inference_settings(**overrides: Any) -> InferenceSettings:
    """Read the environment once; keyword overrides win (tests)."""
    return InferenceSettings(**overrides)
