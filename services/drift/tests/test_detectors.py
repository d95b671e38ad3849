"""The detectors on synthetic streams: they see real changes and stay quiet otherwise."""

from __future__ import annotations

from typing import Any

import numpy as np
from driftloop_core.featureset import KswinSpec, PerformanceDriftSpec, PsiSpec
from driftloop_drift.domain.detectors import KswinMonitor, PerformanceMonitor, Point, PsiMonitor


def errors(rng: np.random.Generator, count: int, rate: float, start: int = 0) -> list[Point]:
    bits = rng.uniform(size=count) < rate
    return [Point(f"e{start + i}", 1000 * (start + i), int(bit)) for i, bit in enumerate(bits)]


def test_adwin_detects_an_abrupt_rise_in_error_rate_soon_after_it() -> None:
    delays = []
    for seed in range(10):
        rng = np.random.default_rng(seed)
        monitor = PerformanceMonitor(PerformanceDriftSpec(), history_limit=20_000)
        stream = errors(rng, 2000, 0.1) + errors(rng, 2000, 0.35, start=2000)
        alarm_at = next(i for i, point in enumerate(stream) if monitor.update(point) is not None)
        delays.append(alarm_at - 2000)
    assert all(0 <= delay <= 400 for delay in delays), delays


def test_adwin_alarm_reports_window_statistic_and_threshold() -> None:
    rng = np.random.default_rng(3)
    monitor = PerformanceMonitor(PerformanceDriftSpec(delta=0.002), history_limit=20_000)
    alarm = None
    for point in errors(rng, 2000, 0.05) + errors(rng, 2000, 0.5, start=2000):
        alarm = monitor.update(point) or alarm
        if alarm:
            break
    assert alarm is not None
    assert alarm.detector == "adwin" and alarm.feature == ""
    assert alarm.threshold == 0.002
    assert alarm.size >= 1 and alarm.last.event_id.startswith("e")
    assert int(alarm.first.event_id[1:]) <= int(alarm.last.event_id[1:])


def test_stationary_error_stream_raises_no_alarm() -> None:
    for seed in range(10):
        rng = np.random.default_rng(100 + seed)
        monitor = PerformanceMonitor(PerformanceDriftSpec(), history_limit=20_000)
        alarms = [monitor.update(point) for point in errors(rng, 4000, 0.15)]
        assert not any(alarms), f"false alarm with seed {seed}"


def test_ddm_is_an_option_and_detects_a_rise() -> None:
    rng = np.random.default_rng(5)
    monitor = PerformanceMonitor(PerformanceDriftSpec(detector="ddm"), history_limit=20_000)
    stream = errors(rng, 1000, 0.05) + errors(rng, 1000, 0.5, start=1000)
    fired = [i for i, point in enumerate(stream) if monitor.update(point) is not None]
    assert fired and fired[0] >= 1000 - 50
    assert monitor.detector == "ddm"


def test_psi_fires_on_a_shifted_distribution_and_not_on_the_same_one(kit: Any) -> None:
    rng = np.random.default_rng(7)
    reference = kit.numeric_reference(rng.gamma(2.0, 40.0, 5000))
    same = PsiMonitor("amount", reference, PsiSpec())
    shifted = PsiMonitor("amount", reference, PsiSpec())
    same_alarms = [
        same.update(Point(f"s{i}", i, float(v))) for i, v in enumerate(rng.gamma(2.0, 40.0, 3000))
    ]
    shifted_alarms = [
        shifted.update(Point(f"d{i}", i, float(v)))
        for i, v in enumerate(rng.gamma(2.0, 70.0, 3000))
    ]
    assert not any(same_alarms)
    assert same.statistic is not None and same.statistic < 0.1
    fired = [alarm for alarm in shifted_alarms if alarm is not None]
    assert fired
    assert fired[0].statistic > 0.25 and fired[0].threshold == 0.25 and fired[0].size == 500
    assert (fired[0].first.event_id, fired[0].last.event_id) == ("d0", "d499")


def test_psi_counts_unseen_categories_as_drift() -> None:
    from driftloop.v1 import common_pb2

    reference = common_pb2.ReferenceDistribution(
        categorical=common_pb2.CategoricalDistribution(frequencies={"web": 0.6, "pos": 0.4})
    )
    monitor = PsiMonitor("channel", reference, PsiSpec(window=100))
    alarms = [monitor.update(Point(f"e{i}", i, "atm" if i % 2 else "web")) for i in range(100)]
    assert alarms[-1] is not None and alarms[-1].feature == "channel"


def test_kswin_fires_on_a_scale_change_and_not_on_a_stationary_stream() -> None:
    rng = np.random.default_rng(11)
    quiet = KswinMonitor("amount", KswinSpec(), history_limit=20_000)
    assert not any(
        quiet.update(Point(f"q{i}", i, float(v))) for i, v in enumerate(rng.gamma(2, 40, 4000))
    )
    moving = KswinMonitor("amount", KswinSpec(), history_limit=20_000)
    values = np.concatenate([rng.gamma(2, 40, 2000), rng.gamma(2, 120, 2000)])
    fired = [
        i for i, v in enumerate(values) if moving.update(Point(f"m{i}", i, float(v))) is not None
    ]
    assert fired and fired[0] >= 2000


def test_detectors_rebuilt_from_their_history_continue_identically() -> None:
    rng = np.random.default_rng(13)
    stream = errors(rng, 3000, 0.1) + errors(rng, 3000, 0.4, start=3000)
    live = PerformanceMonitor(PerformanceDriftSpec(), history_limit=1000)
    for point in stream[:2500]:
        live.update(point)
    rebuilt = PerformanceMonitor(PerformanceDriftSpec(), history_limit=1000)
    rebuilt.replay(Point.from_json(item) for item in live.history())
    rest_live = [live.update(point) for point in stream[2500:]]
    rest_rebuilt = [rebuilt.update(point) for point in stream[2500:]]
    assert rest_live == rest_rebuilt
    assert any(rest_live)

    values = np.concatenate([rng.gamma(2, 40, 3000), rng.gamma(2, 120, 1000)])
    kswin = KswinMonitor("amount", KswinSpec(), history_limit=1000)
    for i, v in enumerate(values[:2500]):
        kswin.update(Point(f"k{i}", i, float(v)))
    copy = KswinMonitor("amount", KswinSpec(), history_limit=1000)
    copy.replay(kswin.history())
    tail = [Point(f"k{i}", i, float(v)) for i, v in enumerate(values[2500:], start=2500)]
    assert [kswin.update(p) for p in tail] == [copy.update(p) for p in tail]
