"""The registry service with rollouts on, through the session broker: a
candidate the gate admits starts a rollout on `models.rollouts`, a verdict
published the way drift publishes it moves the alias, and `ListRollouts`
shows the stage and the live figures. The registry reads verdicts from this
test's own rollouts topic and publishes its events on the shared one, keyed by
the test's model."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from driftloop.v1 import events_pb2, registry_pb2, registry_pb2_grpc
from driftloop_core.grpc.client import insecure_channel
from driftloop_core.kafka import Publisher, Topics
from driftloop_core.kafka.topics import kind_of_message
from driftloop_core.settings import Settings
from driftloop_registry.bootstrap import RegistryService
from driftloop_registry.config import RegistrySettings
from driftloop_testing import collect
from test_cli import driftloop

STARTED = kind_of_message("driftloop.v1.ModelRolloutStarted").ce_type
ENDED = kind_of_message("driftloop.v1.ModelRolloutEnded").ce_type


@pytest.fixture
def config(unique: str) -> RegistrySettings:
    """Rollouts on, on this test's own topics."""
    return RegistrySettings(
        source_topic=f"t.models.trained.{unique}",
        deadletter_topic=f"t.deadletter.{unique}",
        rollouts_topic=f"t.models.rollouts.{unique}",
        group_id=f"g.registry.{unique}",
        rollout="shadow",
        rollout_min_paired=40,
    )


async def rollout_events(settings: Settings, model: str, ce_type: str, count: int) -> list[Any]:
    """The registry's own rollout events for `model` (on the shared topic)."""
    records = await collect(
        settings,
        Topics.MODELS_ROLLOUTS,
        lambda r: (
            r.key == model.encode() and dict(r.headers or ()).get("ce_type") == ce_type.encode()
        ),
        at_least=count,
        timeout_s=20,
    )
    kind = events_pb2.ModelRolloutStarted if ce_type == STARTED else events_pb2.ModelRolloutEnded
    return [kind.FromString(r.value) for r in records]


async def test_a_rollout_started_by_the_gate_ends_in_a_promotion_on_its_live_verdict(
    service: RegistryService,
    config: RegistrySettings,
    admin_settings: Settings,
    model_name: str,
    make_trained: Callable[..., events_pb2.ModelTrained],
    send_trained: Callable[[events_pb2.ModelTrained], Awaitable[None]],
    wait_for: Callable[..., Awaitable[Any]],
) -> None:
    await send_trained(make_trained("r1", 0.80))
    await send_trained(make_trained("r2", 0.90, champion_auc=0.80, champion_version=1, scale=2))
    [started] = await rollout_events(admin_settings, model_name, STARTED, 1)
    assert (started.model, started.candidate_version, started.champion_version) == (
        model_name,
        2,
        1,
    )
    assert started.policy.min_paired == 40 and started.artifact.sha256

    async with insecure_channel(service.endpoint, admin_settings) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)

        async def champion() -> int:
            reply = await stub.GetChampion(registry_pb2.GetChampionRequest(model=model_name))
            return reply.model_version.version

        assert await champion() == 1  # the candidate is on trial, not serving
        listed = await stub.ListRollouts(registry_pb2.ListRolloutsRequest(model=model_name))
        assert [(r.candidate_version, r.stage) for r in listed.rollouts] == [(2, "shadow")]

        verdict = events_pb2.RolloutJudged(
            rollout_id=started.rollout_id,
            model=model_name,
            candidate_version=2,
            champion_version=1,
            verdict=events_pb2.ROLLOUT_VERDICT_PROMOTE,
            reason="candidate v2 better on 64 paired labelled events",
            figures=events_pb2.RolloutFigures(paired=64, champion_errors=20, candidate_errors=6),
        )
        async with Publisher(admin_settings) as publisher:
            await publisher.publish(
                config.rollouts_topic,
                verdict.SerializeToString(),
                key=model_name,
                ce_type=kind_of_message("driftloop.v1.RolloutJudged").ce_type,
                event_id=f"judged-{started.rollout_id}",
            )
        await wait_for(lambda: _is(champion(), 2))
        listed = await stub.ListRollouts(registry_pb2.ListRolloutsRequest(model=model_name))
        # Newest first: the previous champion's watch of v2, then v2's trial.
        watch, rollout = listed.rollouts
        assert (watch.kind, watch.stage, watch.candidate_version) == ("watch", "shadow", 1)
        assert rollout.stage == "promoted" and rollout.figures.paired == 64
        assert "better on 64" in rollout.end_reason

    # What an operator reads: the rollout list and the version's own stage.
    code, out, error = await driftloop(
        "models", "rollout", model_name, "--endpoint", service.endpoint, "--json"
    )
    assert code == 0, error
    _, listed_doc = json.loads(out)["rollouts"]
    assert (listed_doc["candidate_version"], listed_doc["stage"]) == (2, "promoted")
    assert listed_doc["figures"]["paired"] == 64 and listed_doc["policy"]["min_paired"] == 40
    code, out, error = await driftloop(
        "models", "show", model_name, "2", "--endpoint", service.endpoint, "--json"
    )
    assert code == 0, error
    shown = json.loads(out)
    assert shown["status"] == "champion" and shown["rollout"]["stage"] == "promoted"

    [ended] = await rollout_events(admin_settings, model_name, ENDED, 1)
    assert ended.outcome == events_pb2.ROLLOUT_OUTCOME_PROMOTED
    assert ended.figures.candidate_errors == 6


async def _is(value: Awaitable[int], expected: int) -> bool:
    return await value == expected
