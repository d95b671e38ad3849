"""Rollouts in the drift engine and application, no broker: a candidate's shadow
answers reach the rollout judge and nothing else, the verdict is one
`RolloutJudged` that goes out through the outbox, the shadow answers' latency
reaches its figures and the budget, time runs out on a tick when no records
come, and the judge's state survives a restart."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from driftloop.v1 import events_pb2
from driftloop_core.kafka import EventHeaders, PoisonMessage, Record, Topics
from driftloop_core.kafka.topics import kind_of_message
from driftloop_drift.adapters.state import DriftStateStore
from driftloop_drift.application import IDLE_BEFORE_WALL_CLOCK_S, DriftApplication
from driftloop_drift.domain.join import PredictionSeen
from driftloop_drift.domain.rollout import Rollout, RolloutKind, RolloutPolicy, ShadowSeen
from driftloop_drift.entrypoints.kafka import DriftRecords, rollout_of, shadow_seen
from driftloop_drift.handlers import DriftEngine
from driftloop_drift.outbox import Outbox, judged_event_id
from driftloop_drift.ports import ChampionReference
from google.protobuf.message import Message
from prometheus_client import REGISTRY

MINUTE_MS = 60_000


def champion_engine(kit: Any) -> DriftEngine:
    engine = DriftEngine(kit.payments(), kit.engine_config())
    engine.on_promoted(1, kit.reference(), kit.T0_MS)
    return engine


def judged(out: list[Message]) -> list[events_pb2.RolloutJudged]:
    return [m for m in out if isinstance(m, events_pb2.RolloutJudged)]


def shadow_of(prediction: PredictionSeen, predicted: int, rollout_id: str = "r1") -> ShadowSeen:
    return ShadowSeen(rollout_id, prediction.event_id, prediction.model, 2, predicted)


def test_shadow_predictions_change_none_of_drifts_figures(kit: Any) -> None:
    """One engine judges a rollout whose candidate is always wrong; its twin sees
    no rollout and no shadow answer. Everything drift watched is the same: join,
    error stream, detectors, detections, requests, labels, statistics."""
    judging, plain = champion_engine(kit), champion_engine(kit)
    trial = Rollout("r1", "payments", 2, 1, kit.T0_MS, RolloutPolicy(min_paired=3_000))
    assert judging.on_rollout_started(trial, kit.T0_MS).events == []
    stream = kit.Stream(seed=11)
    outputs: dict[str, list[Message]] = {"judging": [], "plain": []}
    # The champion's error rate rises halfway, so the detectors have something to find.
    for index, (prediction, label, now) in enumerate(
        [*stream.events(1500, 0.1), *stream.events(1500, 0.5)]
    ):
        wrong = shadow_of(prediction, 1 - label.label)
        for name, engine in (("judging", judging), ("plain", plain)):
            out = outputs[name]
            with_shadow = name == "judging"
            if with_shadow and index % 3 == 0:
                out.extend(engine.on_shadow(wrong, now).events)  # before the champion's
            out.extend(engine.on_prediction(prediction, now).events)
            if with_shadow and index % 3 == 1:
                out.extend(engine.on_shadow(wrong, now).events)  # between
            out.extend(engine.on_label(label, now).events)
            if with_shadow and index % 3 == 2:
                out.extend(engine.on_shadow(wrong, now).events)  # after the label
            engine.expire(now)

    verdicts = judged(outputs["judging"])
    assert [v.verdict for v in verdicts] == [events_pb2.ROLLOUT_VERDICT_REJECT]
    assert verdicts[0].figures.candidate_errors == verdicts[0].figures.paired == 3_000
    watched = [m for m in outputs["judging"] if not isinstance(m, events_pb2.RolloutJudged)]
    assert watched == outputs["plain"]
    assert any(isinstance(m, events_pb2.DriftDetected) for m in watched), "a drift to compare"
    state, twin = judging.to_json(), plain.to_json()
    state.pop("rollouts"), twin.pop("rollouts")
    assert state == twin
    assert judging.statistics() == plain.statistics()
    assert judging.joiner.stats == plain.joiner.stats and judging.joiner.stats.duplicates == 0
    assert (judging.ignored, judging.labels.total) == (plain.ignored, plain.labels.total)


def test_the_engine_judges_once_and_keeps_the_judge_across_a_restart(kit: Any) -> None:
    engine = champion_engine(kit)
    trial = Rollout("r1", "payments", 2, 1, kit.T0_MS, RolloutPolicy(min_paired=100))
    engine.on_rollout_started(trial, kit.T0_MS)
    rng = random.Random(3)
    stream = kit.Stream(seed=12)
    events = list(stream.events(600, 0.3))

    def feed(engine: DriftEngine, part: list[Any]) -> list[Message]:
        out: list[Message] = []
        for prediction, label, now in part:
            right = rng.random() < 0.95
            candidate = label.label if right else 1 - label.label
            out.extend(engine.on_shadow(shadow_of(prediction, candidate), now).events)
            out.extend(engine.on_prediction(prediction, now).events)
            out.extend(engine.on_label(label, now).events)
        return out

    assert judged(feed(engine, events[:50])) == []
    # A restart halfway: the judge's pending and counted events come back.
    again = DriftEngine.from_json(kit.payments(), kit.engine_config(), engine.to_json())
    assert again.rollouts.counts("r1") == engine.rollouts.counts("r1")
    out = feed(again, events[50:])
    [verdict] = judged(out)
    assert verdict.verdict == events_pb2.ROLLOUT_VERDICT_PROMOTE
    assert (verdict.rollout_id, verdict.model) == ("r1", "payments")
    assert (verdict.candidate_version, verdict.champion_version) == (2, 1)
    figures = verdict.figures
    assert figures.paired >= 100 and figures.candidate_errors < figures.champion_errors
    assert figures.p_value < 0.05 and figures.log_likelihood_ratio > 2.77
    assert verdict.reason.startswith(f"candidate v2 better than champion v1 on {figures.paired}")
    # Judged is judged, after another restart too.
    third = DriftEngine.from_json(kit.payments(), kit.engine_config(), again.to_json())
    assert judged(feed(third, list(stream.events(200, 0.3)))) == []
    assert third.rollouts.open == 0


# ---------------------------------------------------------------------- records and the application


class Sent:
    """A publisher that keeps what it was asked to send."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str, str | None, bytes]] = []

    async def publish(
        self, topic: str, value: bytes, *, key: Any, ce_type: str, event_id: str | None = None
    ) -> object:
        self.records.append((topic, ce_type, event_id, value))
        return None


class NoChampion:
    async def lookup(self, model: str, version: int | None = None) -> ChampionReference | None:
        return None


class Clock:
    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> float:
        return self.ms / 1000


def record(offset: int, message: Message, timestamp_ms: int, topic: str = "sources") -> Record:
    return Record(
        topic=topic,
        partition=0,
        offset=offset,
        key=b"payments",
        value=message.SerializeToString(),
        headers=EventHeaders(
            id=f"r{offset}",
            type=kind_of_message(message.DESCRIPTOR.full_name).ce_type,
            source="test",
        ),
        raw_headers=(),
        timestamp_ms=timestamp_ms,
    )


def application(
    tmp_path: Path, kit: Any, sent: Sent, wall: Clock, monotonic: Clock | None = None
) -> tuple[DriftApplication, DriftStateStore]:
    featureset = kit.payments()
    config = kit.engine_config()

    def engine(state: dict[str, Any] | None) -> DriftEngine:
        if state is None:
            return DriftEngine(featureset, config)
        return DriftEngine.from_json(featureset, config, state)

    store = DriftStateStore(tmp_path / "drift.sqlite")
    app = DriftApplication(
        engine,
        store,
        Outbox(store, sent),
        NoChampion(),
        snapshot_interval_s=1.0,
        clock=monotonic or Clock(0),
        wall_clock=wall,
    )
    return app, store


def started(t_ms: int, **policy: Any) -> events_pb2.ModelRolloutStarted:
    message = events_pb2.ModelRolloutStarted(
        rollout_id="r1",
        model="payments",
        candidate_version=2,
        champion_version=1,
        policy=events_pb2.RolloutPolicy(**policy),
    )
    message.started_at.FromMilliseconds(t_ms)
    return message


async def test_records_reach_the_judge_and_the_malformed_are_deadlettered(
    tmp_path: Path, kit: Any
) -> None:
    """An online learner's answer counts as the champion's when its champion answer
    is the rollout's champion version; a shadow with no rollout, and a rollout
    whose policy makes no sense, are dead-lettered; drift's own verdicts read back
    and other models' rollouts change nothing."""
    t0 = kit.T0_MS
    app, _ = application(tmp_path, kit, Sent(), Clock(t0))
    await app.load()
    records = DriftRecords(app, max_future_ms=300_000)
    learner = events_pb2.Prediction(
        event_id="e1",
        model="payments",
        learner="online:arf",
        label=1,  # the learner's own answer, right: not the champion's
        champion=events_pb2.ShadowAnswer(model_version=1, label=0),
    )
    shadow = events_pb2.Prediction(
        event_id="e1", model="payments", model_version=2, label=1, shadow=True, rollout_id="r1"
    )
    orphan = events_pb2.Prediction(event_id="e2", model="payments", model_version=2, shadow=True)
    label = events_pb2.Observation(event_id="e1", feature_set="payments", label=1)
    insane = replace_policy(started(t0), alpha=0.9, beta=0.5)
    stranger = events_pb2.ModelRolloutStarted(
        rollout_id="x", model="another", candidate_version=5, champion_version=4
    )
    readback = events_pb2.RolloutJudged(rollout_id="r1", model="payments")
    outcomes = await records.handle_batch(
        [
            record(0, started(t0, min_paired=100), t0),
            record(1, learner, t0 + 1),
            record(2, shadow, t0 + 2),
            record(3, orphan, t0 + 3),
            record(4, label, t0 + 4),
            record(5, insane, t0 + 5),
            record(6, stranger, t0 + 6),
            record(7, readback, t0 + 7),
        ]
    )
    assert [o is None for o in outcomes] == [True, True, True, False, True, False, True, True]
    assert outcomes[3] is not None and outcomes[3].field == "rollout_id"
    assert outcomes[5] is not None and outcomes[5].field == "policy"
    engine = app.engine
    counts = engine.rollouts.counts("r1")
    assert counts is not None and counts.paired == 1 and counts.candidate_only_right == 1
    assert engine.rollouts.open == 1
    # The champion's watch saw one prediction of e1 (the champion's), not two.
    assert engine.joiner.stats.joined == 1 and engine.joiner.stats.duplicates == 0
    await app.close()


def replace_policy(message: events_pb2.ModelRolloutStarted, **policy: Any) -> Message:
    out = events_pb2.ModelRolloutStarted()
    out.CopyFrom(message)
    out.rollout_id = "insane"
    out.policy.CopyFrom(events_pb2.RolloutPolicy(**policy))
    return out


async def test_time_runs_out_on_a_tick_when_no_records_come(tmp_path: Path, kit: Any) -> None:
    """Service time stands still without records: once polls have brought nothing
    for a few seconds, the tick judges by the wall clock. While records flow their
    timestamps say the time. The verdict is saved in the outbox before it goes
    out, once, and stays judged after a restart."""
    t0 = kit.T0_MS
    sent, wall, monotonic = Sent(), Clock(t0), Clock(0)
    app, store = application(tmp_path, kit, sent, wall, monotonic)
    await app.load()
    records = DriftRecords(app, max_future_ms=300_000, clock=wall)
    rollout = started(t0)
    rollout.policy.max_duration.FromMilliseconds(10 * MINUTE_MS)
    await records.handle_batch([record(0, rollout, t0)])
    await app.store({("sources", 0): 1})
    await app.tick()
    assert app.engine.rollouts.open == 1 and sent.records == []
    assert REGISTRY.get_sample_value("driftloop_drift_rollouts_open", {"model": "payments"}) == 1

    # Records keep coming, stamped before the deadline: the wall clock is not asked.
    wall.ms = t0 + 11 * MINUTE_MS
    label = events_pb2.Observation(event_id="x", feature_set="payments", label=1)
    await records.handle_batch([record(1, label, t0 + 5 * MINUTE_MS)])
    await app.store({("sources", 0): 2})
    await app.tick()
    assert sent.records == [], "a backlog's records say the time"

    # Then polls that bring nothing: after a few seconds of them, time ran out
    # by the wall clock.
    await app.tick()
    monotonic.ms += int(IDLE_BEFORE_WALL_CLOCK_S * 1000) - 1
    await app.tick()
    assert sent.records == [], "not idle for long enough"
    monotonic.ms += 1
    await app.tick()
    [(topic, ce_type, event_id, value)] = sent.records
    assert topic == Topics.MODELS_ROLLOUTS
    assert ce_type == kind_of_message("driftloop.v1.RolloutJudged").ce_type
    assert event_id == judged_event_id("payments", "r1")
    verdict = events_pb2.RolloutJudged.FromString(value)
    assert verdict.verdict == events_pb2.ROLLOUT_VERDICT_REJECT
    assert verdict.reason.startswith("time ran out: no verdict within 10m;")
    assert verdict.judged_at.ToMilliseconds() == t0 + 11 * MINUTE_MS
    saved = store.load()
    assert saved.outbox == [], "published and removed"
    assert saved.state is not None and saved.state["rollouts"]["trials"][0]["verdict"]
    assert REGISTRY.get_sample_value(
        "driftloop_drift_rollout_verdicts_total",
        {"model": "payments", "verdict": "reject", "rule": "time_ran_out"},
    )
    await app.tick()
    assert len(sent.records) == 1, "judged once"
    assert REGISTRY.get_sample_value("driftloop_drift_rollouts_open", {"model": "payments"}) == 0
    await app.close()

    # A restart: the verdict is in the state, nothing goes out again.
    again, _ = application(tmp_path, kit, sent, wall, monotonic)
    await again.load()
    wall.ms += 60 * MINUTE_MS
    await again.tick()
    monotonic.ms += 60_000
    await again.tick()
    assert len(sent.records) == 1
    assert again.engine.rollouts.verdict("r1") is not None
    # The registry ends it: the judge forgets it, and a duplicated start does not reopen it.
    ended = events_pb2.ModelRolloutEnded(
        rollout_id="r1", model="payments", outcome=events_pb2.ROLLOUT_OUTCOME_REJECTED
    )
    await DriftRecords(again, max_future_ms=300_000, clock=wall).handle_batch(
        [record(2, ended, wall.ms), record(3, rollout, wall.ms)]
    )
    assert again.engine.rollouts.rollout("r1") is None
    await again.close()


async def test_shadow_latencies_reach_the_published_figures_and_the_budget(
    tmp_path: Path, kit: Any
) -> None:
    """Each shadow `Prediction.latency` is the candidate's own scoring time. A
    trial and a watch see the same answers, a better candidate's, with the same
    25 ms budget: the trial's verdict goes out REJECT, naming its p99 and the
    budget; the watch, which the budget does not bind, goes out PROMOTE in a
    watch's words. Both carry the p99 and how many answers it is of."""
    t0 = kit.T0_MS
    sent = Sent()
    app, _ = application(tmp_path, kit, sent, Clock(t0))
    await app.load()
    records = DriftRecords(app, max_future_ms=300_000)
    trial = started(t0, min_paired=30)
    trial.policy.latency_budget_p99.FromMilliseconds(25)
    watch = events_pb2.ModelRolloutStarted()
    watch.CopyFrom(trial)
    watch.rollout_id, watch.kind = "w1", events_pb2.ROLLOUT_KIND_WATCH
    batch = [record(0, trial, t0), record(1, watch, t0)]
    for index in range(30):
        event_id, t_ms = f"e{index}", t0 + 10 + index
        parts: list[Message] = [
            events_pb2.Prediction(event_id=event_id, model="payments", model_version=1, label=0),
            events_pb2.Observation(event_id=event_id, feature_set="payments", label=1),
        ]
        for rollout_id in ("r1", "w1"):
            shadow = events_pb2.Prediction(
                event_id=event_id,
                model="payments",
                model_version=2,
                label=1,
                shadow=True,
                rollout_id=rollout_id,
            )
            # 10.0, 11.1, ..., 41.9 ms: a nearest-rank p99 of 30 is the slowest.
            shadow.latency.FromMicroseconds(10_000 + 1_100 * index)
            parts.insert(1, shadow)
        batch.extend(record(len(batch) + i, part, t_ms) for i, part in enumerate(parts))
    assert all(outcome is None for outcome in await records.handle_batch(batch))
    await app.store({("sources", 0): len(batch)})

    verdicts = {
        verdict.rollout_id: verdict
        for verdict in (events_pb2.RolloutJudged.FromString(value) for *_, value in sent.records)
    }
    assert sorted(verdicts) == ["r1", "w1"]
    for verdict in verdicts.values():
        assert verdict.figures.paired == verdict.figures.candidate_only_right == 30
        assert (verdict.figures.candidate_p99_ms, verdict.figures.candidate_scored) == (41.9, 30)
    rejected, kept = verdicts["r1"], verdicts["w1"]
    assert rejected.verdict == events_pb2.ROLLOUT_VERDICT_REJECT
    assert rejected.reason.startswith("candidate v2 better than champion v1 on 30 paired")
    assert rejected.reason.endswith(
        "but its shadow p99 41.9 ms (on 30 shadow answers) is over the 25.0 ms budget"
    )
    assert kept.verdict == events_pb2.ROLLOUT_VERDICT_PROMOTE
    assert kept.reason.startswith("previous champion v2 did better than new champion v1 on 30")
    assert "budget" not in kept.reason
    assert REGISTRY.get_sample_value(
        "driftloop_drift_rollout_verdicts_total",
        {"model": "payments", "verdict": "reject", "rule": "over_latency_budget"},
    )
    await app.close()


def test_kind_budget_and_latency_as_the_judge_reads_them_off_the_wire(kit: Any) -> None:
    """Unset kind reads as a trial, an unset budget as none; an unset shadow
    latency is no measurement (not 0 ms), and a negative budget is refused."""
    t0 = kit.T0_MS
    plain = rollout_of(started(t0), t0)
    assert plain.kind is RolloutKind.TRIAL and plain.policy.latency_budget_ms == 0.0
    assert plain.latency_budget_ms is None
    message = started(t0)
    message.kind = events_pb2.ROLLOUT_KIND_WATCH
    message.policy.latency_budget_p99.FromMicroseconds(25_500)
    watch = rollout_of(message, t0)
    assert watch.kind is RolloutKind.WATCH and watch.policy.latency_budget_ms == 25.5
    assert watch.latency_budget_ms is None, "a watch is held to no budget"
    message.kind = events_pb2.ROLLOUT_KIND_TRIAL
    assert rollout_of(message, t0).latency_budget_ms == 25.5
    message.policy.latency_budget_p99.FromMilliseconds(-1)
    with pytest.raises(PoisonMessage):
        rollout_of(message, t0)

    shadow = events_pb2.Prediction(
        event_id="e", model="payments", model_version=2, shadow=True, rollout_id="r1"
    )
    assert shadow_seen(shadow).latency_ms is None
    shadow.latency.FromMicroseconds(12_345)
    assert shadow_seen(shadow).latency_ms == 12.345


def test_a_label_for_an_unknown_event_waits_only_while_a_rollout_is_open(kit: Any) -> None:
    """Without a rollout the judge keeps nothing: drift's memory is as before."""
    engine = champion_engine(kit)
    for prediction, label, now in kit.Stream(seed=13).events(100, 0.2):
        engine.on_prediction(prediction, now)
        engine.on_label(replace(label, event_id=f"other-{label.event_id}"), now)
    assert engine.to_json()["rollouts"] == {"trials": [], "ended": []}
