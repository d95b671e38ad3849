"""The inference service's own knobs, read from `DRIFTLOOP_INFERENCE_*` variables.

They sit beside the shared `Settings` (endpoints, Kafka, gRPC limits); see the
service README for what each one does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from driftloop_core.kafka.topics import Topics
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

MissingPolicy = Literal["default", "fail"]
LookupFailurePolicy = Literal["unavailable", "defaults"]


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
    # onnxruntime session threads (small models: 1 and 1 avoid thread hand-offs).
    intra_op_threads: int = Field(default=1, ge=0)
    inter_op_threads: int = Field(default=1, ge=0)
    # Server processes sharing the port with SO_REUSEPORT (Linux).
    workers: int = Field(default=1, ge=1)
    reuse_port: bool = False
    # Predict: feature store lookup deadline and the missing-feature policy.
    feature_lookup_timeout_s: float = Field(default=0.25, gt=0)
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
    # Group id prefix; a uuid is appended so every replica sees every promotion.
    group_prefix: str = "driftloop-inference"
    # Registry calls at start and on promotions.
    registry_timeout_s: float = Field(default=30.0, gt=0)
    # Seconds between attempts to fetch the champion while none is loaded.
    retry_interval_s: float = Field(default=2.0, gt=0)


def load_inference_settings(**overrides: Any) -> InferenceSettings:
    """Read the environment once; keyword overrides win (tests)."""
    return InferenceSettings(**overrides)
