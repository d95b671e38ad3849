"""Synthetic streams for the drift service's tests: a payments-like feature set,
reference bins built the way the trainer builds them, and predictions whose
error rate and feature distributions the test chooses."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from driftloop.v1 import common_pb2
from driftloop_core.broker import free_port
from driftloop_core.featureset import FeatureSet, default_featureset_path, load_featureset
from driftloop_core.kafka import Publisher
from driftloop_core.settings import Settings
from driftloop_drift.config import DriftSettings
from driftloop_drift.domain.join import LabelSeen, PredictionSeen
from driftloop_drift.domain.policy import PolicyConfig
from driftloop_drift.handlers import EngineConfig

T0_MS = 1_763_800_000_000


def payments(name: str = "payments") -> FeatureSet:
    featureset = load_featureset(default_featureset_path())
    return featureset.model_copy(update={"name": name})


def numeric_reference(values: np.ndarray, bins: int = 10) -> common_pb2.ReferenceDistribution:
    edges = np.unique(np.quantile(values, np.linspace(0.0, 1.0, bins + 1)))
    index = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, len(edges) - 2)
    counts = np.bincount(index, minlength=len(edges) - 1)
    return common_pb2.ReferenceDistribution(
        numeric=common_pb2.NumericDistribution(
            edges=[float(e) for e in edges], fractions=[float(c) / len(values) for c in counts]
        ),
        count=len(values),
    )


def reference(seed: int = 0) -> dict[str, common_pb2.ReferenceDistribution]:
    rng = np.random.default_rng(seed)
    return {
        "amount": numeric_reference(rng.gamma(2.0, 40.0, 5000)),
        "hour": numeric_reference(rng.integers(0, 24, 5000).astype(float)),
        "channel": common_pb2.ReferenceDistribution(
            categorical=common_pb2.CategoricalDistribution(
                frequencies={"web": 0.5, "pos": 0.3, "atm": 0.2}
            ),
            count=5000,
        ),
    }


def engine_config(**policy: Any) -> EngineConfig:
    defaults = {
        "cooldown_ms": 60_000,
        "in_flight_timeout_ms": 600_000,
        "bootstrap_min_labels": 100,
        "last_n": 2000,
        "min_post_drift_rows": 100,
    }
    defaults.update(policy)
    return EngineConfig(
        policy=PolicyConfig(**defaults),
        pending_ttl_ms=3_600_000,
        max_pending=100_000,
        label_memory=100_000,
        history_limit=20_000,
    )


class Stream:
    """Predictions and labels of one model at one event per 100 ms of event time."""

    def __init__(self, model: str = "payments", version: int = 1, seed: int = 1) -> None:
        self.model = model
        self.version = version
        self.rng = np.random.default_rng(seed)
        self.n = 0

    def events(
        self, count: int, error_rate: float, amount_scale: float = 40.0
    ) -> Iterator[tuple[PredictionSeen, LabelSeen, int]]:
        """(prediction, its true label, service time) triples."""
        for _ in range(count):
            self.n += 1
            event_time = T0_MS + self.n * 100
            truth = int(self.rng.uniform() < 0.3)
            wrong = self.rng.uniform() < error_rate
            prediction = PredictionSeen(
                event_id=f"{self.model}-e{self.n:06d}",
                model=self.model,
                version=self.version,
                predicted=1 - truth if wrong else truth,
                event_time_ms=event_time,
                features={
                    "amount": float(self.rng.gamma(2.0, amount_scale)),
                    "hour": float(self.rng.integers(0, 24)),
                    "channel": str(self.rng.choice(["web", "pos", "atm"], p=[0.5, 0.3, 0.2])),
                },
            )
            label = LabelSeen(prediction.event_id, self.model, truth, event_time)
            yield prediction, label, event_time


def with_version(prediction: PredictionSeen, version: int) -> PredictionSeen:
    return replace(prediction, version=version)


def drift_settings(unique: str, **overrides: Any) -> DriftSettings:
    """The service's settings on source topics of one test's own, with a fast policy."""
    values: dict[str, Any] = {
        "predictions_topic": f"predictions-{unique}",
        "labels_topic": f"valid-{unique}",
        "promoted_topic": f"promoted-{unique}",
        "registered_topic": f"registered-{unique}",
        "failed_topic": f"failed-{unique}",
        "rollouts_topic": f"rollouts-{unique}",
        "bootstrap_min_labels": 50,
        "cooldown_s": 0,
        "min_post_drift_rows": 50,
        "last_n": 500,
        "registry_timeout_s": 1.0,
        "snapshot_interval_s": 0.2,
    }
    return DriftSettings(**(values | overrides))


class Kit:
    """The helpers above, handed to tests as a fixture (conftest modules are not importable)."""

    T0_MS = T0_MS
    payments = staticmethod(payments)
    numeric_reference = staticmethod(numeric_reference)
    reference = staticmethod(reference)
    engine_config = staticmethod(engine_config)
    Stream = Stream
    with_version = staticmethod(with_version)
    drift_settings = staticmethod(drift_settings)


@pytest.fixture
def kit() -> type[Kit]:
    return Kit


@pytest.fixture
def config(unique: str) -> DriftSettings:
    """The drift service's settings on this test's own topics and group."""
    return drift_settings(unique)


@pytest.fixture
def stack_settings(settings: Settings) -> Settings:
    # Nothing listens there: the registry is "down" (drift watches performance only).
    settings.endpoints.registry = f"127.0.0.1:{free_port()}"
    return settings


@pytest.fixture
async def publisher(stack_settings: Settings) -> AsyncIterator[Publisher]:
    async with Publisher(stack_settings) as running:
        yield running


@pytest.fixture
def featureset() -> FeatureSet:
    return payments()
