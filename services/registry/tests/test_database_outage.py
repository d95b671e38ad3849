"""The registry on PostgreSQL while its database is unreachable for a while.

A `ModelTrained` that arrives during the outage is a passing failure, not a
poison record: it is retried, never dead-lettered, and registered exactly once
when the database is back. The process keeps serving health meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from driftloop.v1 import events_pb2, registry_pb2, registry_pb2_grpc
from driftloop_core.kafka import Topics
from driftloop_core.settings import Settings
from driftloop_registry.bootstrap import SERVICE_NAME, RegistryService
from driftloop_registry.config import RegistrySettings
from driftloop_testing import token_channel
from grpc_health.v1 import health_pb2, health_pb2_grpc

pytestmark = pytest.mark.integration

READ_TOKEN = "s3cret-read-token"

OUTAGE_S = 20.0


@pytest.fixture
def config(config: RegistrySettings, postgres_url: str) -> RegistrySettings:
    """The test's topics and group, on a fresh PostgreSQL database."""
    return config.model_copy(update={"database_url": postgres_url})


async def test_a_model_trained_during_a_database_outage_is_registered_once_it_is_back(
    service: RegistryService,
    postgres: Any,
    admin_settings: Settings,
    config: RegistrySettings,
    model_name: str,
    make_trained: Callable[..., events_pb2.ModelTrained],
    send_trained: Callable[[events_pb2.ModelTrained], Awaitable[None]],
    read_events: Any,
    wait_for: Any,
) -> None:
    trained = make_trained("run-during-outage", 0.8)
    async with token_channel(service.endpoint, READ_TOKEN) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        # The pool now holds a connection the outage will cut.
        assert (await stub.ListModels(registry_pb2.ListModelsRequest())).models == []

        await asyncio.to_thread(postgres.halt)
        try:
            await send_trained(trained)
            await asyncio.sleep(OUTAGE_S)
            serving = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
            assert serving.status == health_pb2.HealthCheckResponse.SERVING
        finally:
            await asyncio.to_thread(postgres.resume)
        back = time.monotonic()

        async def listed() -> list[registry_pb2.ModelSummary]:
            reply = await stub.ListModels(registry_pb2.ListModelsRequest())
            return [m for m in reply.models if m.model == model_name]

        models = await wait_for(listed, within=30.0)
        print(f"\nregistered {time.monotonic() - back:.1f} s after the database came back")
        assert [(m.latest_version, m.version_count) for m in models] == [(1, 1)]

    registered = await read_events(
        admin_settings, Topics.MODELS_REGISTERED, model_name, events_pb2.ModelRegistered, count=1
    )
    assert [(m.version, m.request_id) for _, m in registered] == [(1, "run-during-outage")]
    assert [v.request_id for v in service.store.list_versions(model_name)] == ["run-during-outage"]
    letters = await read_events(
        admin_settings,
        config.deadletter_topic,
        model_name,
        events_pb2.DeadLetter,
        count=1,
        within=3.0,
    )
    assert letters == []


async def test_the_first_read_after_a_database_restart_answers(
    service: RegistryService, postgres: Any, model_name: str
) -> None:
    async with token_channel(service.endpoint, READ_TOKEN) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        request = registry_pb2.ListVersionsRequest(model=model_name)
        assert (await stub.ListVersions(request)).versions == []
        # Nothing reaches the database while it is down: the pooled connection
        # it cut is found dead only by the next read.
        await asyncio.to_thread(postgres.halt)
        try:
            await asyncio.sleep(1.0)
        finally:
            await asyncio.to_thread(postgres.resume)
        assert (await stub.ListVersions(request)).versions == []
