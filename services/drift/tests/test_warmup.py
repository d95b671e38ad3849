"""A fresh deployment: aggregates whose windows are still filling raise no data drift,
and once they are full a real shift in an aggregate is still seen.

The stream is the payments feature set's, one payment every 2 s of event time
by one of 60 customers, with `amount_mean_1h` and `txn_count_10m` computed as
the feature store does (the customer's earlier payments in the window).
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Iterator
from typing import Any

import numpy as np
from driftloop.v1 import events_pb2
from driftloop_drift.domain.join import LabelSeen, PredictionSeen
from driftloop_drift.handlers import DriftEngine
from google.protobuf.message import Message

STEP_MS = 2_000
HOUR_MS = 3_600_000
AGGREGATES = {"amount_mean_1h", "txn_count_10m"}


class AggregateStream:
    def __init__(self, t0_ms: int, seed: int = 11) -> None:
        self.t0_ms = t0_ms
        self.rng = np.random.default_rng(seed)
        self.n = 0
        self.history: dict[str, deque[tuple[int, float]]] = defaultdict(deque)

    def events(
        self, count: int, amount_scale: float = 40.0
    ) -> Iterator[tuple[PredictionSeen, LabelSeen, int]]:
        for _ in range(count):
            self.n += 1
            now = self.t0_ms + self.n * STEP_MS
            customer = f"c{self.rng.integers(0, 60)}"
            past = self.history[customer]
            while past and past[0][0] < now - HOUR_MS:
                past.popleft()
            amount = float(self.rng.gamma(2.0, amount_scale))
            features: dict[str, float | str] = {
                "amount": amount,
                "hour": float(self.rng.integers(0, 24)),
                "channel": str(self.rng.choice(["web", "pos", "atm"], p=[0.5, 0.3, 0.2])),
                "txn_count_10m": float(sum(1 for t, _ in past if t >= now - 600_000)),
            }
            if past:  # a customer's first payment has no mean (the default fills it)
                features["amount_mean_1h"] = sum(a for _, a in past) / len(past)
            past.append((now, amount))
            truth = int(self.rng.uniform() < 0.3)
            wrong = self.rng.uniform() < 0.1
            event_id = f"w-{self.n:06d}"
            prediction = PredictionSeen(
                event_id, "payments", 1, 1 - truth if wrong else truth, now, features
            )
            yield prediction, LabelSeen(event_id, "payments", truth, now), now


def data_drifts(engine: DriftEngine, stream: AggregateStream, count: int, **kw: Any) -> list[Any]:
    out: list[Message] = []
    for prediction, label, now in stream.events(count, **kw):
        out.extend(engine.on_prediction(prediction, now).events)
        out.extend(engine.on_label(label, now).events)
    return [
        (m.detector, m.feature)
        for m in out
        if isinstance(m, events_pb2.DriftDetected) and m.kind == events_pb2.DRIFT_KIND_DATA
    ]


def cold_reference(kit: Any, stream_seed: int) -> dict[str, Any]:
    """The champion's bins as a first model trained on the deployment's first rows has them."""
    reference = kit.reference()
    values: dict[str, list[float]] = {name: [] for name in AGGREGATES}
    for prediction, _, _ in AggregateStream(kit.T0_MS, stream_seed).events(900):
        for name in AGGREGATES:
            value = prediction.features.get(name)
            if isinstance(value, float):
                values[name].append(value)
    for name, seen in values.items():
        reference[name] = kit.numeric_reference(np.asarray(seen))
    return reference


def test_filling_windows_raise_no_data_drift_and_a_warm_shift_is_seen(kit: Any) -> None:
    engine = DriftEngine(kit.payments(), kit.engine_config())
    engine.on_promoted(1, cold_reference(kit, 12), kit.T0_MS)
    stream = AggregateStream(kit.T0_MS, seed=13)
    # The first hour: the 1 h mean's windows are still filling.
    assert data_drifts(engine, stream, 1800) == []
    assert not engine.is_warm("amount_mean_1h", kit.T0_MS + stream.n * STEP_MS - 1)
    assert engine.is_warm("amount_mean_1h", kit.T0_MS + stream.n * STEP_MS + STEP_MS)
    # Warm and still stationary: nothing either.
    assert data_drifts(engine, stream, 3000) == []
    # Payments grow: the raw amount and, as its windows turn over, the 1 h mean drift.
    shifted = data_drifts(engine, stream, 3000, amount_scale=90.0)
    assert ("psi", "amount_mean_1h") in shifted or ("kswin", "amount_mean_1h") in shifted, shifted
