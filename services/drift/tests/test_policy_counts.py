"""A training request says how many labelled events drift counted in its window,
so the trainer can wait until the offline log holds them all."""

from __future__ import annotations

from driftloop.v1 import events_pb2
from driftloop_drift.domain.policy import LabelLedger, PolicyConfig, RetrainPolicy

T0_MS = 1_763_800_000_000
CONFIG = PolicyConfig(
    cooldown_ms=60_000,
    in_flight_timeout_ms=600_000,
    bootstrap_min_labels=100,
    last_n=2000,
    min_post_drift_rows=300,
    post_drift_wait_ms=900_000,
)


def labelled(count: int, start_ms: int = T0_MS) -> LabelLedger:
    """`count` labelled events, one per second of event time from `start_ms`."""
    ledger = LabelLedger(memory=100_000)
    for i in range(count):
        ledger.add(f"e{i:05d}", start_ms + i * 1000)
    return ledger


def performance_drift() -> events_pb2.DriftDetected:
    return events_pb2.DriftDetected(
        drift_id="d1",
        model="payments",
        model_version=1,
        kind=events_pb2.DRIFT_KIND_PERFORMANCE,
        detector="adwin",
        statistic=0.3,
        threshold=0.1,
    )


def test_a_post_drift_request_carries_the_labelled_events_counted_since_the_change() -> None:
    labels = labelled(1000)
    change_ms = T0_MS + 600 * 1000  # 400 labelled events at or after it
    detected_ms = T0_MS + 650 * 1000
    policy = RetrainPolicy("payments", CONFIG)
    policy.on_drift(performance_drift(), change_ms, detected_ms, now_ms=T0_MS)

    request = policy.on_pending(change_ms, labels, now_ms=T0_MS + 1000).request

    assert request is not None
    assert request.window.time_range.start.ToMilliseconds() == change_ms
    assert request.expected_labelled_rows == 400
    assert "400 labelled events since the change point" in request.reason


def test_a_last_n_request_carries_what_drift_counted_up_to_n() -> None:
    labels = labelled(1000)
    change_ms = T0_MS + 900 * 1000  # only 100 after it: never enough
    policy = RetrainPolicy("payments", CONFIG)
    policy.on_drift(performance_drift(), change_ms, change_ms, now_ms=T0_MS)

    request = policy.on_pending(change_ms, labels, now_ms=T0_MS + CONFIG.post_drift_wait_ms).request

    assert request is not None
    assert request.window.last_n == 2000
    assert request.expected_labelled_rows == 1000


def test_a_bootstrap_request_carries_what_drift_counted_up_to_n() -> None:
    few = RetrainPolicy("payments", CONFIG).on_label(labelled(414), False, now_ms=T0_MS).request
    many = RetrainPolicy("payments", CONFIG).on_label(labelled(2500), False, now_ms=T0_MS).request

    assert few is not None and few.window.last_n == 2000
    assert few.expected_labelled_rows == 414
    assert many is not None and many.expected_labelled_rows == 2000
