"""A real drift is never lost to a false one.

A shift in the inputs that costs no accuracy asks for no training; a rise of
the error rate leads to a training run on post-change rows even while a
request for a data drift is in flight, which it supersedes.
"""

from __future__ import annotations

from typing import Any

from driftloop.v1 import events_pb2
from driftloop_drift.domain.join import LabelSeen
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


def test_an_early_change_is_not_held_back_by_the_bootstrap(kit: Any) -> None:
    """The cooldown keeps drifts from retraining in a storm; the first model is not
    such a retrain, so an error rise soon after it asks for training at once."""
    engine = DriftEngine(
        kit.payments(),
        kit.engine_config(cooldown_ms=10 * 60_000, bootstrap_min_labels=100),
    )
    out = EngineResult()
    for i in range(120):
        out.add(engine.on_label(LabelSeen(f"b{i}", "payments", i % 2, kit.T0_MS + i), kit.T0_MS))
    first = of(out, events_pb2.TrainingRequested)
    assert [r.trigger for r in first] == [events_pb2.TRAINING_TRIGGER_BOOTSTRAP]
    now = kit.T0_MS + 1_000
    assert engine.on_outcome("payments", first[0].request_id, now, registered=True)
    engine.on_promoted(1, kit.reference(), now)
    stream = kit.Stream(seed=7)
    run(engine, stream, 600, 0.05)
    # 80 s after the bootstrap, well inside its 10 min cooldown, the error rises.
    later = of(run(engine, stream, 900, 0.4), events_pb2.TrainingRequested)
    assert [r.trigger for r in later] == [events_pb2.TRAINING_TRIGGER_DRIFT], later
    assert later[0].window.HasField("time_range")
    # A second drift's request would wait for the cooldown: that one was a drift's.
    assert engine.on_outcome("payments", later[0].request_id, kit.T0_MS + stream.n * 100)
    assert of(run(engine, stream, 1500, 0.05), events_pb2.TrainingRequested) == []
