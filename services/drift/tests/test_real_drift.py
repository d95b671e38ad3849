"""A real drift is never lost to a false one.

A shift in the inputs that costs no accuracy asks for no training; a rise of
the error rate leads to a training run on post-change rows even while a
request for a data drift is in flight, which it supersedes.
"""

from __future__ import annotations

from typing import Any

from driftloop.v1 import events_pb2
from driftloop_drift.handlers import DriftEngine, EngineResult


def run(engine: DriftEngine, stream: Any, count: int, rate: float, **kw: Any) -> EngineResult:
    out = EngineResult()
    for prediction, label, now in stream.events(count, rate, **kw):
        out.add(engine.on_prediction(prediction, now))
        out.add(engine.on_label(label, now))
    return out


def of(out: EngineResult, cls: type[Any]) -> list[Any]:
    return [m for m in out.events if isinstance(m, cls)]


def test_data_drift_without_a_rise_in_error_asks_for_no_training(kit: Any) -> None:
    engine = DriftEngine(kit.payments(), kit.engine_config(post_drift_wait_ms=60_000))
    engine.on_promoted(1, kit.reference(), kit.T0_MS)
    stream = kit.Stream(seed=4)
    run(engine, stream, 600, 0.1)
    # Amounts double, the error rate stays at 10%; 1,300 events are 130 s, past the wait.
    out = run(engine, stream, 1300, 0.1, amount_scale=90.0)
    drifts = of(out, events_pb2.DriftDetected)
    assert drifts and {d.kind for d in drifts} == {events_pb2.DRIFT_KIND_DATA}
    assert of(out, events_pb2.TrainingRequested) == []
    dropped = [s for s in out.suppressed if "without a rise in error" in s.why]
    assert dropped and dropped[0].drift_id == drifts[0].drift_id
    assert engine.policy.in_flight is None


def test_error_rise_supersedes_a_data_drift_request_in_flight(kit: Any) -> None:
    """The issue's case: a data drift's request (on pre-change rows) holds the slot
    when the error rate rises. The performance drift is not dropped: it asks for
    training on the rows after the rise, and the older request's outcome no longer
    counts."""
    engine = DriftEngine(
        kit.payments(),
        kit.engine_config(
            cooldown_ms=10 * 60_000,
            min_post_drift_rows=200,
            post_drift_wait_ms=30_000,
            data_drift_retrains=True,
        ),
    )
    engine.on_promoted(1, kit.reference(), kit.T0_MS)
    stream = kit.Stream(seed=5)
    run(engine, stream, 600, 0.05)
    early = run(engine, stream, 900, 0.05, amount_scale=90.0)
    (stale,) = of(early, events_pb2.TrainingRequested)
    assert "from the detector)" in stale.reason, "no rise in error: rows the PSI chose"
    assert engine.policy.in_flight is not None and not engine.policy.in_flight.confirmed
    assert engine.policy.in_flight.request_id == stale.request_id
    # The concept changes: the error rate rises from 5% to 40%.
    change_ms = kit.T0_MS + (stream.n + 1) * 100
    later = run(engine, stream, 1200, 0.4, amount_scale=90.0)
    performance = [
        d
        for d in of(later, events_pb2.DriftDetected)
        if d.kind == events_pb2.DRIFT_KIND_PERFORMANCE
    ]
    assert performance, "the error rise was not detected"
    (fresh,) = of(later, events_pb2.TrainingRequested)
    assert fresh.parent_drift_id == performance[0].drift_id
    assert f"supersedes request {stale.request_id}" in fresh.reason
    start_ms = fresh.window.time_range.start.ToMilliseconds()
    assert abs(start_ms - change_ms) <= 40 * 100, (start_ms - change_ms) / 100
    assert not any(performance[0].drift_id == s.drift_id for s in later.suppressed)
    # The superseded run ends: ignored; the new one is still the one in flight.
    now = kit.T0_MS + stream.n * 100
    assert not engine.on_outcome("payments", stale.request_id, now)
    assert engine.policy.in_flight is not None
    assert engine.policy.in_flight.request_id == fresh.request_id
    assert engine.on_outcome("payments", fresh.request_id, now)


def test_error_rise_replaces_a_data_drift_still_waiting(kit: Any) -> None:
    engine = DriftEngine(kit.payments(), kit.engine_config(min_post_drift_rows=200))
    engine.on_promoted(1, kit.reference(), kit.T0_MS)
    stream = kit.Stream(seed=6)
    run(engine, stream, 600, 0.05)
    run(engine, stream, 550, 0.05, amount_scale=90.0)
    assert engine.policy.pending is not None and not engine.policy.pending.performance
    out = run(engine, stream, 1200, 0.4, amount_scale=90.0)
    (request,) = of(out, events_pb2.TrainingRequested)
    parent = next(
        d for d in of(out, events_pb2.DriftDetected) if d.drift_id == request.parent_drift_id
    )
    assert parent.kind == events_pb2.DRIFT_KIND_PERFORMANCE
    assert request.window.WhichOneof("kind") == "time_range"
