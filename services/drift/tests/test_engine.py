"""The drift engine on synthetic streams: join, detection, retrain policy, state.

Service time advances 100 ms per event, as the record timestamps would.
"""

from __future__ import annotations

from typing import Any

from driftloop.v1 import events_pb2
from driftloop_drift.domain.join import Joiner, LabelSeen, PredictionSeen
from driftloop_drift.handlers import DriftEngine
from google.protobuf.message import Message


def requests(out: list[Message]) -> list[events_pb2.TrainingRequested]:
    return [m for m in out if isinstance(m, events_pb2.TrainingRequested)]


def drifts(out: list[Message]) -> list[events_pb2.DriftDetected]:
    return [m for m in out if isinstance(m, events_pb2.DriftDetected)]


def feed(engine: DriftEngine, stream: Any, count: int, rate: float, **kw: Any) -> list[Message]:
    out: list[Message] = []
    for prediction, label, now in stream.events(count, rate, **kw):
        out.extend(engine.on_prediction(prediction, now).events)
        out.extend(engine.on_label(label, now).events)
    return out


def champion_engine(kit: Any, **policy: Any) -> DriftEngine:
    engine = DriftEngine(kit.payments(), kit.engine_config(**policy))
    engine.on_promoted(1, kit.reference(), kit.T0_MS)
    return engine


def test_join_in_either_order_gives_the_error_bit() -> None:
    joiner = Joiner(ttl_ms=10_000, max_pending=100)
    wrong = PredictionSeen("a", "m", 1, predicted=1, event_time_ms=5)
    right = PredictionSeen("b", "m", 1, predicted=0, event_time_ms=6)
    assert joiner.add_prediction(wrong, 0) is None
    joined = joiner.add_label(LabelSeen("a", "m", 0, 5), 10)
    assert joined is not None and joined.error == 1
    assert joiner.add_label(LabelSeen("b", "m", 0, 6), 20) is None
    joined = joiner.add_prediction(right, 30)
    assert joined is not None and joined.error == 0
    assert joiner.pending == (0, 0)


def test_pending_halves_expire_after_the_ttl() -> None:
    joiner = Joiner(ttl_ms=1_000, max_pending=100)
    joiner.add_prediction(PredictionSeen("late", "m", 1, 1, 0), now_ms=0)
    joiner.add_label(LabelSeen("orphan", "m", 1, 0), now_ms=500)
    joiner.expire(now_ms=1_200)
    assert joiner.pending == (0, 1)
    assert joiner.add_label(LabelSeen("late", "m", 1, 0), 1_300) is None
    joiner.expire(now_ms=2_000)
    assert joiner.stats.expired_predictions == 1 and joiner.stats.expired_labels == 1
    assert joiner.pending == (0, 1)  # the late label now waits in turn


def test_error_rate_rise_becomes_drift_and_a_training_request(kit: Any) -> None:
    engine = champion_engine(kit)
    stream = kit.Stream()
    assert feed(engine, stream, 2000, 0.1) == []
    out = feed(engine, stream, 1000, 0.45)
    performance = [d for d in drifts(out) if d.kind == events_pb2.DRIFT_KIND_PERFORMANCE]
    assert performance, "no performance drift"
    first = performance[0]
    assert (first.model, first.model_version, first.detector) == ("payments", 1, "adwin")
    assert first.statistic > 0.1 and first.threshold == 0.002 and first.window_size > 0
    assert first.first_event_id and first.last_event_id
    asked = requests(out)
    assert len(asked) == 1, "one request in flight at a time"
    request = asked[0]
    assert request.trigger == events_pb2.TRAINING_TRIGGER_DRIFT
    assert request.parent_drift_id in {d.drift_id for d in drifts(out)}
    assert request.requested_by == "drift" and request.model == "payments"
    assert request.window.WhichOneof("kind") in ("time_range", "last_n")


def test_stationary_stream_of_the_same_length_asks_for_no_retraining(kit: Any) -> None:
    engine = champion_engine(kit)
    out = feed(engine, kit.Stream(seed=2), 3000, 0.1)
    assert drifts(out) == [], [(d.detector, d.feature, d.statistic) for d in drifts(out)]
    assert requests(out) == []


def test_feature_shift_is_data_drift_on_that_feature(kit: Any) -> None:
    engine = champion_engine(kit)
    stream = kit.Stream(seed=3)
    feed(engine, stream, 600, 0.1)
    out = feed(engine, stream, 800, 0.1, amount_scale=90.0)
    data = [d for d in drifts(out) if d.kind == events_pb2.DRIFT_KIND_DATA]
    assert data and {d.feature for d in data} == {"amount"}
    psi = next(d for d in data if d.detector == "psi")
    assert psi.statistic > psi.threshold == 0.25 and psi.window_size == 500
    assert psi.window_range.start.ToMilliseconds() < psi.window_range.end.ToMilliseconds()


def test_retrain_waits_for_post_drift_rows_and_trains_on_them_alone(kit: Any) -> None:
    """The error rate rises at a known event: the request comes once enough labelled
    events follow the change, and its window starts at the change, not at the
    (earlier) start of the detector's window."""
    engine = champion_engine(kit, min_post_drift_rows=300)
    stream = kit.Stream(seed=4)
    feed(engine, stream, 2000, 0.05)
    change_ms = kit.T0_MS + (stream.n + 1) * 100
    out = feed(engine, stream, 1000, 0.3)
    asked = requests(out)
    assert len(asked) == 1, [(d.detector, d.feature) for d in drifts(out)]
    request = asked[0]
    drift = next(d for d in drifts(out) if d.drift_id == request.parent_drift_id)
    start_ms = request.window.time_range.start.ToMilliseconds()
    # Within 40 events of the true change, where the detector's window began far earlier.
    assert abs(start_ms - change_ms) <= 40 * 100, (start_ms - change_ms) / 100
    assert drift.window_range.start.ToMilliseconds() < change_ms - 40 * 100
    # Asked for as soon as 300 labelled events (the one at the change point included)
    # were there, give or take the estimate's refresh interval.
    labelled_since = (request.requested_at.ToMilliseconds() - start_ms) // 100 + 1
    assert 300 <= labelled_since <= 300 + 10
    assert "from the error stream" in request.reason


def test_pure_data_drift_trains_from_where_the_feature_changed(kit: Any) -> None:
    """The error rate stays put, so the change point comes from the PSI window's bins
    (when data drift alone is set to retrain)."""
    engine = champion_engine(kit, min_post_drift_rows=100, data_drift_retrains=True)
    stream = kit.Stream(seed=4)
    feed(engine, stream, 600, 0.1)
    shift_ms = kit.T0_MS + (stream.n + 1) * 100
    out = feed(engine, stream, 800, 0.1, amount_scale=90.0)
    request = requests(out)[0]
    drift = next(d for d in drifts(out) if d.drift_id == request.parent_drift_id)
    assert (drift.detector, drift.feature) == ("psi", "amount")
    assert request.window.WhichOneof("kind") == "time_range"
    start_ms = request.window.time_range.start.ToMilliseconds()
    assert drift.window_range.start.ToMilliseconds() < start_ms
    assert abs(start_ms - shift_ms) <= 60 * 100, (start_ms - shift_ms) / 100
    assert "from the detector)" in request.reason


def test_too_few_post_drift_rows_settles_for_the_last_n_after_the_wait(kit: Any) -> None:
    engine = champion_engine(
        kit, min_post_drift_rows=100_000, post_drift_wait_ms=60_000, data_drift_retrains=True
    )
    stream = kit.Stream(seed=4)
    feed(engine, stream, 600, 0.1)
    out = feed(engine, stream, 700, 0.1, amount_scale=90.0)
    assert drifts(out) and requests(out) == []
    assert engine.policy.pending is not None
    detected_ms = engine.policy.pending.since_ms
    # 600 more events are 60 s of service time: the wait is over.
    later = requests(feed(engine, stream, 600, 0.1, amount_scale=90.0))
    assert len(later) == 1 and later[0].window.last_n == 2000
    assert later[0].requested_at.ToMilliseconds() - detected_ms >= 60_000
    assert engine.policy.pending is None


def test_a_promotion_drops_the_pending_drift(kit: Any) -> None:
    engine = champion_engine(kit, min_post_drift_rows=100_000)
    stream = kit.Stream(seed=4)
    feed(engine, stream, 600, 0.1)
    assert drifts(feed(engine, stream, 700, 0.1, amount_scale=90.0))
    assert engine.policy.pending is not None
    engine.on_promoted(2, kit.reference(), stream.n * 100 + kit.T0_MS)
    assert engine.policy.pending is None


def test_cooldown_and_in_flight_hold_back_further_requests(kit: Any) -> None:
    engine = champion_engine(kit, cooldown_ms=10 * 60_000, data_drift_retrains=True)
    stream = kit.Stream(seed=5)
    feed(engine, stream, 600, 0.1)
    first = requests(feed(engine, stream, 700, 0.1, amount_scale=90.0))
    assert len(first) == 1
    # Still drifted: more detections, but the request is in flight.
    more = feed(engine, stream, 1500, 0.1, amount_scale=90.0)
    assert drifts(more) and requests(more) == []
    # The request failed: no longer in flight, but the cooldown holds.
    assert engine.on_outcome("payments", first[0].request_id, stream.n * 100 + kit.T0_MS)
    assert requests(feed(engine, stream, 1500, 0.1, amount_scale=90.0)) == []
    # After the cooldown the next detection asks again, with another request id.
    later = requests(feed(engine, stream, 6000, 0.1, amount_scale=90.0))
    assert len(later) == 1 and later[0].request_id != first[0].request_id


def test_in_flight_times_out_so_the_loop_never_wedges(kit: Any) -> None:
    engine = champion_engine(
        kit, cooldown_ms=0, in_flight_timeout_ms=120_000, data_drift_retrains=True
    )
    stream = kit.Stream(seed=6)
    feed(engine, stream, 600, 0.1)
    assert len(requests(feed(engine, stream, 700, 0.1, amount_scale=90.0))) == 1
    # 1,500 events are 150 s of service time: past the in-flight timeout.
    assert len(requests(feed(engine, stream, 1500, 0.1, amount_scale=90.0))) >= 1


def test_bootstrap_after_enough_labels_with_no_champion(kit: Any) -> None:
    engine = DriftEngine(kit.payments(), kit.engine_config(bootstrap_min_labels=50))
    out: list[Message] = []
    for i in range(80):
        out += engine.on_label(
            LabelSeen(f"b{i}", "payments", i % 2, kit.T0_MS + i), kit.T0_MS + i
        ).events
    asked = requests(out)
    assert len(asked) == 1
    assert asked[0].trigger == events_pb2.TRAINING_TRIGGER_BOOTSTRAP
    assert asked[0].window.last_n == 2000 and asked[0].parent_drift_id == ""
    # Its registration ends the request; with a champion no more bootstraps.
    assert engine.on_outcome("payments", asked[0].request_id, kit.T0_MS + 100)
    engine.on_promoted(1, kit.reference(), kit.T0_MS + 200)
    later = engine.on_label(LabelSeen("x", "payments", 1, kit.T0_MS), kit.T0_MS + 10**9).events
    assert requests(later) == []


def test_a_registered_bootstrap_waits_for_its_promotion_not_a_second_bootstrap(
    kit: Any,
) -> None:
    """`models.registered` can reach drift before `models.promoted`: labels in
    between, past the cooldown, must not ask for a second first model."""
    engine = DriftEngine(
        kit.payments(), kit.engine_config(bootstrap_min_labels=50, cooldown_ms=1_000)
    )
    out: list[Message] = []
    for i in range(60):
        out += engine.on_label(
            LabelSeen(f"b{i}", "payments", i % 2, kit.T0_MS + i), kit.T0_MS + i
        ).events
    [first] = requests(out)
    assert engine.on_outcome("payments", first.request_id, kit.T0_MS + 100, registered=True)
    later: list[Message] = []
    for i in range(60, 120):
        now = kit.T0_MS + 20_000 + i
        later += engine.on_label(LabelSeen(f"b{i}", "payments", i % 2, now), now).events
    assert requests(later) == []
    engine.on_promoted(1, kit.reference(), kit.T0_MS + 30_000)
    assert engine.champion == 1


def test_bootstrap_request_id_is_the_same_on_a_replay(kit: Any) -> None:
    ids = []
    for _ in range(2):
        engine = DriftEngine(kit.payments(), kit.engine_config(bootstrap_min_labels=10))
        out: list[Message] = []
        for i in range(10):
            out += engine.on_label(LabelSeen(f"b{i}", "payments", 1, i), i).events
        ids.append(requests(out)[0].request_id)
    assert ids[0] == ids[1]


def test_promotion_resets_detectors_and_ends_the_request_in_flight(kit: Any) -> None:
    engine = champion_engine(kit, data_drift_retrains=True)
    stream = kit.Stream(seed=7)
    feed(engine, stream, 600, 0.1)
    asked = requests(feed(engine, stream, 700, 0.1, amount_scale=90.0))
    assert engine.policy.in_flight is not None
    engine.on_promoted(2, kit.reference(), kit.T0_MS + stream.n * 100)
    assert engine.policy.in_flight is None and engine.champion == 2
    assert engine.statistics().get(("psi", "amount")) is None, "windows start empty"
    # Version 1 traffic after the promotion does not feed version 2's detectors.
    for prediction, _, now in stream.events(600, 0.5, amount_scale=90.0):
        assert engine.on_prediction(prediction, now).events == []
    assert asked and engine.ignored == 600


def test_replayed_predictions_and_labels_do_not_count_twice(kit: Any) -> None:
    engine = champion_engine(kit)
    stream = kit.Stream(seed=8)
    pairs = list(stream.events(300, 0.2))
    for prediction, label, now in pairs:
        engine.on_prediction(prediction, now)
        engine.on_label(label, now)
    before = (engine.labels.total, engine.joiner.stats.joined, engine.statistics())
    for prediction, label, now in pairs:
        assert engine.on_prediction(prediction, now).events == []
        assert engine.on_label(label, now).events == []
    assert (engine.labels.total, engine.joiner.stats.joined, engine.statistics()) == before


def test_state_round_trip_rebuilds_the_same_engine(kit: Any) -> None:
    import json

    config = kit.engine_config()
    live = champion_engine(kit)
    stream = kit.Stream(seed=9)
    feed(live, stream, 1500, 0.1)
    for prediction, _, now in stream.events(50, 0.1):
        live.on_prediction(prediction, now)  # some predictions wait for labels
    saved = json.loads(json.dumps(live.to_json()))
    restored = DriftEngine.from_json(kit.payments(), config, saved)
    assert restored.to_json() == live.to_json()
    tail = list(stream.events(1500, 0.45, amount_scale=90.0))
    out_live: list[Message] = []
    out_restored: list[Message] = []
    for prediction, label, now in tail:
        out_live += live.on_prediction(prediction, now).events + live.on_label(label, now).events
        out_restored += (
            restored.on_prediction(prediction, now).events + restored.on_label(label, now).events
        )
    assert out_live and out_live == out_restored
