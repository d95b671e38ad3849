"""The demo report, built from timelines written by hand (no broker, no services)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from driftloop.v1 import common_pb2, events_pb2
from driftloop_cli.demo.driver import record_from, trace_id
from driftloop_cli.demo.report import build_report, summary_markdown, write_report
from driftloop_cli.demo.timeline import (
    DriftSeen,
    PromotionSeen,
    Served,
    Timeline,
    TrainingSeen,
    VersionSeen,
    recovered,
)
from driftloop_core.kafka.topics import Topics

T0 = 1_800_000_000.0
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
ONSET = 500


def event_id(index: int) -> str:
    return f"e{index}"


def served(index: int, version: int | None, correct: bool) -> Served:
    truth = index % 2
    if version is None:
        return Served(index, T0 + index * 0.1, truth, "no_model")
    return Served(index, T0 + index * 0.1, truth, "ok", version, truth if correct else 1 - truth)


def drift_timeline() -> Timeline:
    """1000 events at 10/s: no model before event 100, v1 until 700, then v2.
    Correct: 95% before the onset (500), 70% during the drift, 96% on v2."""
    timeline = Timeline(started_at=T0 - 20, finished_at=T0 + 101, outcome="recovered")
    for i in range(1000):
        timeline.sent[i] = T0 + i * 0.1
        if i < 100:
            timeline.served.append(served(i, None, False))
        elif i < ONSET:
            timeline.served.append(served(i, 1, i % 20 != 0))
        elif i < 700:
            timeline.served.append(served(i, 1, i % 10 < 7))
        else:
            timeline.served.append(served(i, 2, i % 25 != 0))
    timeline.trainings += [
        TrainingSeen("r1", "bootstrap", "", T0 + 5, "no champion", "a" * 32),
        TrainingSeen("r2", "drift", "d2", T0 + 56.2, "adwin", "b" * 32),
    ]
    timeline.drifts += [
        DriftSeen("d1", 1, "data", "psi", "amount", 0.25, 0.2, event_id(300), T0 + 30.5, "c" * 32),
        DriftSeen("d2", 1, "performance", "adwin", "", 0.3, 0.002, event_id(560), T0 + 56, TRACE),
    ]
    timeline.versions += [
        VersionSeen(1, "champion", "first", "r1", {"roc_auc": 0.97, "accuracy": 0.95}, T0 + 9.9),
        VersionSeen(2, "champion", "better", "r2", {"roc_auc": 0.96, "accuracy": 0.96}, T0 + 69.5),
    ]
    timeline.promotions += [
        PromotionSeen(1, None, "champion", "promote", "first", T0 + 9.95),
        PromotionSeen(2, 1, "champion", "promote", "better", T0 + 69.6),
    ]
    return timeline


def report_of(timeline: Timeline, onset: int | None = ONSET) -> dict[str, object]:
    scenario = {"kind": "drift" if onset is not None else "stationary", "seed": 7}
    index_of = {event_id(i): i for i in range(1000)}
    return build_report(timeline, scenario, onset, index_of, window=100)


def test_accuracy_before_during_and_after_the_drift() -> None:
    report = report_of(drift_timeline())
    accuracy = report["accuracy"]
    assert isinstance(accuracy, dict)
    assert accuracy["before"] == pytest.approx(0.95)
    assert accuracy["during"] == pytest.approx(0.70)
    assert accuracy["after"] == pytest.approx(0.96)
    assert report["post_drift_version"] == 2
    series = accuracy["series"]
    assert series[0]["event"] >= 100 and series[-1]["event"] == 999
    assert series[-1]["version"] == 2 and series[-1]["accuracy"] == pytest.approx(0.96)
    predictions = report["predictions"]
    assert isinstance(predictions, dict)
    assert predictions["no_model_yet"] == 100 and predictions["answered"] == 900
    assert predictions["by_version"] == {"1": 600, "2": 300}


def test_detection_delay_recovery_time_and_the_retrain_trace() -> None:
    report = report_of(drift_timeline())
    drift = report["drift"]
    assert isinstance(drift, dict)
    assert drift["onset_event"] == ONSET
    assert drift["detected_event"] == 560 and drift["delay_events"] == 60
    assert drift["delay_seconds"] == pytest.approx(6.0)
    assert drift["kind"] == "performance" and drift["detector"] == "adwin"
    assert drift["detected_at"].startswith("2027-01-15T08:")
    assert report["false_alarms"] == 1  # the PSI alarm at event 300
    # Onset sent at T0 + 50; first answer from v2 at T0 + 70.
    assert report["recovery_seconds"] == pytest.approx(20.0)
    assert report["retrain_trace_id"] == TRACE
    assert report["drift_retrains"] == 1


def test_versions_carry_metrics_times_and_what_they_served() -> None:
    versions = report_of(drift_timeline())["versions"]
    assert isinstance(versions, list)
    first, second = versions
    assert first["version"] == 1 and first["trigger"] == "bootstrap"
    assert first["metrics"] == {"accuracy": 0.95, "roc_auc": 0.97}
    assert first["registered_at"] and first["promoted_at"]
    assert first["serving_from_event"] == 100 and first["predictions"] == 600
    assert second["trigger"] == "drift" and second["serving_from_event"] == 700
    assert second["accuracy"] == pytest.approx(0.96)


def test_recovery_is_judged_on_the_newest_retrained_version() -> None:
    """A first retrain that mixed old rows (v2, poor) and a second one (v3, good)."""
    timeline = drift_timeline()
    for k, item in enumerate(timeline.served):
        if item.index >= 850:
            timeline.served[k] = served(item.index, 3, item.index % 50 != 0)
    timeline.versions.append(VersionSeen(3, "champion", "again", "r3", {}, T0 + 84.9))
    timeline.promotions.append(PromotionSeen(3, 2, "champion", "promote", "again", T0 + 84.95))
    assert not recovered(timeline, ONSET, window=150, target=0.99)
    assert recovered(timeline, ONSET, window=150, target=0.97)
    report = report_of(timeline)
    assert report["post_drift_version"] == 3 and report["retrained_versions"] == [2, 3]
    accuracy = report["accuracy"]
    assert isinstance(accuracy, dict)
    assert accuracy["after"] == pytest.approx(0.98)
    # During: v1 after the onset (70% of 200) and v2 (96% of 150).
    assert accuracy["during"] == pytest.approx((140 + 144) / 350, abs=1e-4)
    assert report["first_retrain_serving_seconds"] == pytest.approx(20.0)
    assert report["recovery_seconds"] == pytest.approx(35.0)
    assert "Retrained after the drift: v2, v3" in summary_markdown(report)


def test_a_stationary_run_has_no_phases_and_counts_every_alarm() -> None:
    timeline = drift_timeline()
    timeline.served = [s for s in timeline.served if (s.version or 1) == 1]
    timeline.promotions = timeline.promotions[:1]
    timeline.versions = timeline.versions[:1]
    timeline.outcome = "completed"
    report = report_of(timeline, onset=None)
    accuracy = report["accuracy"]
    assert isinstance(accuracy, dict)
    assert accuracy["during"] is None and accuracy["after"] is None
    assert report["post_drift_version"] is None and report["recovery_seconds"] is None
    assert report["false_alarms"] == 2
    drift = report["drift"]
    assert isinstance(drift, dict) and drift["detected_event"] is None


def test_recovered_needs_enough_good_answers_from_the_retrained_version() -> None:
    timeline = drift_timeline()
    assert recovered(timeline, ONSET, window=300, target=0.9)
    assert not recovered(timeline, ONSET, window=301, target=0.9)
    assert not recovered(timeline, ONSET, window=300, target=0.97)
    assert not recovered(timeline, None, window=10, target=0.5)


def test_the_report_folder_holds_json_a_png_and_the_summary(tmp_path: Path) -> None:
    report = report_of(drift_timeline())
    paths = write_report(report, tmp_path / "demo-report")
    assert [p.name for p in paths] == ["report.json", "accuracy.png", "summary.md"]
    stored = json.loads(paths[0].read_text())
    assert stored["accuracy"]["after"] == pytest.approx(0.96)
    assert paths[1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = paths[2].read_text()
    assert "event 500" in summary and "60 events and 6.0 s" in summary
    assert "95.0% before the drift, 70.0% during it, 96.0% after recovery" in summary
    assert TRACE in summary


def test_loop_records_are_read_from_their_protobuf_and_trace_header() -> None:
    drift = events_pb2.DriftDetected(
        drift_id="d9",
        model_version=3,
        kind=events_pb2.DRIFT_KIND_DATA,
        detector="psi",
        feature="amount",
        statistic=0.4,
        threshold=0.2,
        last_event_id="e7",
    )
    drift.detected_at.FromSeconds(1_800_000_000)
    headers = {"traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"}
    seen = record_from(Topics.DRIFT_DETECTED, drift.SerializeToString(), headers)
    assert seen == DriftSeen("d9", 3, "data", "psi", "amount", 0.4, 0.2, "e7", T0, TRACE)

    registered = events_pb2.ModelRegistered(
        version=2, status=common_pb2.MODEL_VERSION_STATUS_CHAMPION, request_id="r2"
    )
    version = record_from(Topics.MODELS_REGISTERED, registered.SerializeToString(), {})
    assert isinstance(version, VersionSeen) and version.status == "champion"
    promoted = events_pb2.ModelPromoted(to_version=2, kind=events_pb2.PROMOTION_KIND_ROLLBACK)
    promotion = record_from(Topics.MODELS_PROMOTED, promoted.SerializeToString(), {})
    assert isinstance(promotion, PromotionSeen)
    assert promotion.kind == "rollback" and promotion.from_version is None
    assert trace_id("not a traceparent") is None
