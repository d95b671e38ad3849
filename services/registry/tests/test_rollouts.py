"""Promotion as a rollout: with rollouts on, a candidate the offline gate admits
does not take the alias; it starts a rollout that the live verdict ends.

The registry's side of the contract, through its use cases on a real SQLite
store: which events go out (and under which ids), what the alias and the
versions say after each verdict, and that a replayed or late verdict changes
nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from driftloop.v1 import events_pb2
from driftloop_registry.adapters.schema import open_engine
from driftloop_registry.adapters.store import SqlRegistryStore
from driftloop_registry.domain import (
    GatePolicy,
    InvalidRequestError,
    RolloutKind,
    RolloutPolicy,
    Stage,
    Status,
)
from driftloop_registry.handlers import Registry
from fakes import FakeArtifacts, FlakyPublisher, onnx_like
from prometheus_client import REGISTRY

POLICY = RolloutPolicy(min_paired=50, max_duration_s=600, alpha=0.05, beta=0.1, effect=0.2)


def make_registry(
    tmp_path: Path, publisher: FlakyPublisher, rollout: RolloutPolicy | None = POLICY
) -> tuple[Registry, FakeArtifacts]:
    artifacts = FakeArtifacts()
    store = SqlRegistryStore(open_engine(f"sqlite:///{tmp_path / 'registry.db'}"))
    return Registry(store, artifacts, publisher, GatePolicy(), rollout), artifacts


def trained(
    artifacts: FakeArtifacts, request_id: str, auc: float, champion: int | None = None
) -> events_pb2.ModelTrained:
    message = events_pb2.ModelTrained(
        request_id=request_id,
        model="payments",
        artifact=artifacts.put(onnx_like()),
        metrics={"roc_auc": auc},
    )
    if champion is not None:
        message.champion_version = champion
        message.champion_metrics["roc_auc"] = 0.8
    return message


def judged(rollout_id: str, verdict: int, reason: str = "live") -> events_pb2.RolloutJudged:
    return events_pb2.RolloutJudged(
        rollout_id=rollout_id,
        model="payments",
        verdict=verdict,  # type: ignore[arg-type]
        reason=reason,
        figures=events_pb2.RolloutFigures(
            paired=120, champion_errors=30, candidate_errors=12, p_value=0.001
        ),
    )


def sent(publisher: FlakyPublisher) -> list[str]:
    return [name for name, _, _ in publisher.sent]


async def champion_of(reg: Registry) -> int:
    return (await reg.resolve("payments", None, None)).version


async def test_an_admitted_candidate_starts_a_rollout_and_a_promote_verdict_moves_the_alias(
    tmp_path: Path,
) -> None:
    publisher = FlakyPublisher()
    reg, artifacts = make_registry(tmp_path, publisher)
    first = await reg.register_trained(trained(artifacts, "r1", 0.8))
    assert first.change is not None and first.rollout is None  # no champion: no trial
    second = await reg.register_trained(trained(artifacts, "r2", 0.9, champion=1))
    assert second.change is None and second.rollout is not None
    rollout = second.rollout
    assert (rollout.candidate_version, rollout.champion_version) == (2, 1)
    assert await champion_of(reg) == 1
    assert (await reg.resolve("payments", 2, None)).status is Status.CANDIDATE
    assert sent(publisher) == [
        "ModelRegistered",
        "ModelPromoted",
        "ModelRegistered",
        "ModelRolloutStarted",
    ]
    started = publisher.sent[-1][2]
    assert isinstance(started, events_pb2.ModelRolloutStarted)
    assert started.artifact.sha256 and started.policy.min_paired == 50
    assert started.policy.max_duration.ToSeconds() == 600
    assert publisher.sent[-1][1] == f"{rollout.rollout_id}-started"

    end = await reg.judged(judged(rollout.rollout_id, events_pb2.ROLLOUT_VERDICT_PROMOTE))
    assert end is not None and end.rollout.stage is Stage.PROMOTED
    assert await champion_of(reg) == 2
    # The previous champion then watches the new one (below).
    assert sent(publisher)[-3:] == ["ModelPromoted", "ModelRolloutEnded", "ModelRolloutStarted"]
    promoted, ended = publisher.sent[-3][2], publisher.sent[-2][2]
    assert isinstance(promoted, events_pb2.ModelPromoted) and promoted.actor == "rollout"
    assert promoted.to_version == 2 and promoted.from_version == 1
    assert isinstance(ended, events_pb2.ModelRolloutEnded)
    assert ended.outcome == events_pb2.ROLLOUT_OUTCOME_PROMOTED
    assert ended.figures.paired == 120 and ended.figures.candidate_errors == 12

    # The same verdict again (a redelivery) changes nothing and publishes nothing.
    count = len(publisher.sent)
    assert await reg.judged(judged(rollout.rollout_id, events_pb2.ROLLOUT_VERDICT_PROMOTE)) is None
    assert len(publisher.sent) == count
    watch, listed = await reg.rollouts("payments")  # newest first
    assert (watch.kind, watch.stage) == (RolloutKind.WATCH, Stage.SHADOW)
    assert listed.stage is Stage.PROMOTED and listed.figures == {
        "paired": 120,
        "champion_errors": 30,
        "candidate_errors": 12,
        "p_value": 0.001,
    }


async def test_a_reject_verdict_keeps_the_champion_and_says_why(tmp_path: Path) -> None:
    publisher = FlakyPublisher()
    reg, artifacts = make_registry(tmp_path, publisher)
    await reg.register_trained(trained(artifacts, "r1", 0.8))
    second = await reg.register_trained(trained(artifacts, "r2", 0.9, champion=1))
    assert second.rollout is not None
    end = await reg.judged(
        judged(second.rollout.rollout_id, events_pb2.ROLLOUT_VERDICT_REJECT, "worse live")
    )
    assert end is not None and end.rollout.stage is Stage.REJECTED and end.change is None
    assert await champion_of(reg) == 1
    candidate = await reg.resolve("payments", 2, None)
    assert candidate.status is Status.CANDIDATE
    assert "rejected by its rollout: worse live" in candidate.status_reason
    assert sent(publisher)[-1] == "ModelRolloutEnded"


async def test_a_newer_candidate_or_a_manual_promotion_supersedes_the_open_rollout(
    tmp_path: Path,
) -> None:
    publisher = FlakyPublisher()
    reg, artifacts = make_registry(tmp_path, publisher)
    await reg.register_trained(trained(artifacts, "r1", 0.8))
    second = await reg.register_trained(trained(artifacts, "r2", 0.9, champion=1))
    third = await reg.register_trained(trained(artifacts, "r3", 0.95, champion=1))
    assert second.rollout is not None and third.rollout is not None
    assert third.superseded is not None
    assert third.superseded.rollout_id == second.rollout.rollout_id
    assert sent(publisher)[-3:] == ["ModelRegistered", "ModelRolloutEnded", "ModelRolloutStarted"]
    # The superseded rollout's verdict arrives late: ignored.
    late = judged(second.rollout.rollout_id, events_pb2.ROLLOUT_VERDICT_PROMOTE)
    assert await reg.judged(late) is None
    assert await champion_of(reg) == 1

    # An operator promotes v2 by hand while v3 is on trial: v3's rollout ends.
    await reg.promote("payments", 2, actor="ops", reason="by hand")
    rollouts = {r.candidate_version: r for r in await reg.rollouts("payments")}
    assert rollouts[3].stage is Stage.SUPERSEDED and "promoted by ops" in rollouts[3].end_reason
    assert (
        await reg.judged(judged(third.rollout.rollout_id, events_pb2.ROLLOUT_VERDICT_PROMOTE))
        is None
    )
    assert await champion_of(reg) == 2


async def test_rollout_events_left_unpublished_go_out_on_the_next_flush(tmp_path: Path) -> None:
    publisher = FlakyPublisher()
    reg, artifacts = make_registry(tmp_path, publisher)
    await reg.register_trained(trained(artifacts, "r1", 0.8))
    publisher.failures = 2  # ModelRegistered of v2, then the flush's first attempt
    message = trained(artifacts, "r2", 0.9, champion=1)
    with pytest.raises(ConnectionError):
        await reg.register_trained(message)
    with pytest.raises(ConnectionError):
        await reg.flush_outbox()
    await reg.flush_outbox()
    assert sent(publisher)[-2:] == ["ModelRegistered", "ModelRolloutStarted"]
    await reg.flush_outbox()
    assert sent(publisher)[-2:] == ["ModelRegistered", "ModelRolloutStarted"]


async def test_rollouts_off_keeps_the_gate_moving_the_alias(tmp_path: Path) -> None:
    publisher = FlakyPublisher()
    reg, artifacts = make_registry(tmp_path, publisher, rollout=None)
    await reg.register_trained(trained(artifacts, "r1", 0.8))
    second = await reg.register_trained(trained(artifacts, "r2", 0.9, champion=1))
    assert second.rollout is None and second.change is not None
    assert await champion_of(reg) == 2


async def test_a_verdict_without_a_rollout_id_or_verdict_is_refused(tmp_path: Path) -> None:
    reg, _ = make_registry(tmp_path, FlakyPublisher())
    with pytest.raises(InvalidRequestError, match="rollout_id"):
        await reg.judged(events_pb2.RolloutJudged(verdict=events_pb2.ROLLOUT_VERDICT_PROMOTE))
    with pytest.raises(InvalidRequestError, match="verdict"):
        await reg.judged(events_pb2.RolloutJudged(rollout_id="x"))


async def promoted_with_a_watch(
    tmp_path: Path, publisher: FlakyPublisher
) -> tuple[Registry, events_pb2.ModelRolloutStarted]:
    """v1 champion, v2 promoted by its rollout; the watch that follows, as published."""
    reg, artifacts = make_registry(tmp_path, publisher)
    await reg.register_trained(trained(artifacts, "r1", 0.8))
    second = await reg.register_trained(trained(artifacts, "r2", 0.9, champion=1))
    assert second.rollout is not None
    await reg.judged(judged(second.rollout.rollout_id, events_pb2.ROLLOUT_VERDICT_PROMOTE))
    watch = publisher.sent[-1][2]
    assert isinstance(watch, events_pb2.ModelRolloutStarted)
    return reg, watch


def rollout_steps(kind: str, stage: str) -> float:
    value = REGISTRY.get_sample_value(
        "driftloop_registry_rollouts_total", {"model": "payments", "kind": kind, "stage": stage}
    )
    return value or 0.0


def watch_open(candidate: int) -> float | None:
    return REGISTRY.get_sample_value(
        "driftloop_registry_rollout_open",
        {"model": "payments", "kind": "watch", "candidate": str(candidate)},
    )


async def test_the_previous_champion_watches_a_promoted_one_and_takes_the_alias_back(
    tmp_path: Path,
) -> None:
    before = {
        step: rollout_steps(*step)
        for step in [("trial", "shadow"), ("trial", "promoted"), ("watch", "shadow")]
    }
    rolled_back = rollout_steps("watch", "rolled_back")
    publisher = FlakyPublisher()
    reg, watch = await promoted_with_a_watch(tmp_path, publisher)
    # Every step counted once, by kind and stage; the watch shows as open.
    assert {step: rollout_steps(*step) - was for step, was in before.items()} == {
        ("trial", "shadow"): 1,
        ("trial", "promoted"): 1,
        ("watch", "shadow"): 1,
    }
    assert watch_open(1) == 1
    assert watch.kind == events_pb2.ROLLOUT_KIND_WATCH
    # The previous champion is the watch's candidate, against the new champion.
    assert (watch.candidate_version, watch.champion_version) == (1, 2)
    assert watch.policy.max_duration.ToSeconds() == 1800
    assert not watch.policy.HasField("latency_budget_p99")

    verdict = judged(watch.rollout_id, events_pb2.ROLLOUT_VERDICT_PROMOTE, "v1 did better")
    end = await reg.judged(verdict)
    assert end is not None and end.rollout.stage is Stage.ROLLED_BACK and end.watch is None
    assert await champion_of(reg) == 1
    assert sent(publisher)[-2:] == ["ModelPromoted", "ModelRolloutEnded"]
    rollback, ended = publisher.sent[-2][2], publisher.sent[-1][2]
    assert isinstance(rollback, events_pb2.ModelPromoted)
    assert rollback.kind == events_pb2.PROMOTION_KIND_ROLLBACK
    assert (rollback.from_version, rollback.to_version, rollback.actor) == (2, 1, "rollout")
    assert rollback.reason == "watch after promotion: v1 did better"
    assert isinstance(ended, events_pb2.ModelRolloutEnded)
    assert ended.outcome == events_pb2.ROLLOUT_OUTCOME_ROLLED_BACK
    assert rollout_steps("watch", "rolled_back") - rolled_back == 1
    assert watch_open(1) == 0
    history = await reg.history("payments")
    assert [(c.to_version, c.kind) for c in history] == [
        (1, events_pb2.PROMOTION_KIND_PROMOTE),
        (2, events_pb2.PROMOTION_KIND_PROMOTE),
        (1, events_pb2.PROMOTION_KIND_ROLLBACK),
    ]


async def test_a_watch_that_finds_the_new_champion_no_worse_keeps_it(tmp_path: Path) -> None:
    publisher = FlakyPublisher()
    reg, watch = await promoted_with_a_watch(tmp_path, publisher)
    end = await reg.judged(judged(watch.rollout_id, events_pb2.ROLLOUT_VERDICT_REJECT, "no better"))
    assert end is not None and end.rollout.stage is Stage.KEPT and end.change is None
    assert await champion_of(reg) == 2
    ended = publisher.sent[-1][2]
    assert isinstance(ended, events_pb2.ModelRolloutEnded)
    assert ended.outcome == events_pb2.ROLLOUT_OUTCOME_KEPT
    assert ended.kind == events_pb2.ROLLOUT_KIND_WATCH


async def test_no_watch_when_its_duration_is_zero_and_a_budget_travels_to_the_judge(
    tmp_path: Path,
) -> None:
    publisher = FlakyPublisher()
    policy = RolloutPolicy(min_paired=50, latency_budget_ms=25.0, watch_s=0)
    reg, artifacts = make_registry(tmp_path, publisher, rollout=policy)
    await reg.register_trained(trained(artifacts, "r1", 0.8))
    second = await reg.register_trained(trained(artifacts, "r2", 0.9, champion=1))
    assert second.rollout is not None
    started = publisher.sent[-1][2]
    assert isinstance(started, events_pb2.ModelRolloutStarted)
    assert started.policy.latency_budget_p99.ToMicroseconds() == 25_000
    end = await reg.judged(judged(second.rollout.rollout_id, events_pb2.ROLLOUT_VERDICT_PROMOTE))
    assert end is not None and end.watch is None
    assert sent(publisher)[-1] == "ModelRolloutEnded"
