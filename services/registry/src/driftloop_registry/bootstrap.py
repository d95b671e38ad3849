"""Composition root of the registry: SQL store, artifact store, publisher,
`models.trained` consumer and the gRPC server, on one event loop.

`build` wires the parts and opens nothing: the engine connects on first use,
the publisher and the consumer on `start`. `RegistryService` runs what `build`
made: it creates the schema, publishes what a crash left in the outbox, then
serves gRPC and consumes. Tests build it with their own settings (a private
home, per-test topics) and run it in-process.

A database outage mid-run stops nothing: the consumer retries the record in
hand until the database answers again (never dead-lettering it), and health
stays SERVING, since the process itself need not be restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

import structlog
from aiokafka.errors import KafkaError
from driftloop.v1 import registry_pb2_grpc
from driftloop_core.artifacts import ArtifactStore
from driftloop_core.grpc.auth import Authorizer
from driftloop_core.grpc.server import GrpcServer, ServicerRegistration, build_server
from driftloop_core.kafka import (
    ConsumerLoop,
    Publisher,
    TopicSpec,
    default_topic_specs,
    ensure_topics,
)
from driftloop_core.runtime import serve_until_signal
from driftloop_core.settings import Settings
from sqlalchemy.exc import SQLAlchemyError

from driftloop_registry.adapters.schema import create_schema, make_engine
from driftloop_registry.adapters.store import SqlRegistryStore
from driftloop_registry.config import RegistrySettings
from driftloop_registry.entrypoints.grpc import RegistryServicer
from driftloop_registry.entrypoints.kafka import RegistryHandler
from driftloop_registry.handlers import Registry

log = structlog.get_logger(__name__)
SERVICE_NAME = "driftloop.v1.RegistryService"


@dataclass
class Parts:
    """Everything `build` wires, handed to `RegistryService`."""

    store: SqlRegistryStore
    publisher: Publisher
    registry: Registry
    servicers: list[ServicerRegistration]
    consumer: ConsumerLoop


def build(settings: Settings, config: RegistrySettings) -> Parts:
    """The registry's parts, wired; nothing connects and no task starts here."""
    store = SqlRegistryStore(make_engine(config.url_for(settings)))
    publisher = Publisher(settings)
    registry = Registry(
        store,
        ArtifactStore.from_settings(settings),
        publisher,
        config.gate,
        config.rollout_policy,
    )
    servicer = RegistryServicer(registry, Authorizer(settings), config.chunk_size)
    consumer = ConsumerLoop(
        settings,
        topics=[config.source_topic, config.rollouts_topic],
        group_id=config.group_id,
        handle=RegistryHandler(registry, config.rollouts_topic),
        publisher=publisher,
        deadletter_topic=config.deadletter_topic,
    )
    return Parts(
        store=store,
        publisher=publisher,
        registry=registry,
        servicers=[
            (registry_pb2_grpc.add_RegistryServiceServicer_to_server, servicer, SERVICE_NAME)
        ],
        consumer=consumer,
    )


class RegistryService:
    """Starts, serves and stops the parts `build` wired (or the `parts` given)."""

    def __init__(
        self,
        settings: Settings,
        config: RegistrySettings,
        address: str,
        parts: Parts | None = None,
    ) -> None:
        self.settings = settings
        self.config = config
        self.address = address
        self.parts = parts or build(settings, config)
        self.server: GrpcServer | None = None
        self._tasks: list[asyncio.Task[Any]] = []

    @property
    def store(self) -> SqlRegistryStore:
        return self.parts.store

    @property
    def registry(self) -> Registry:
        return self.parts.registry

    async def start(self) -> None:
        parts, kafka = self.parts, self.settings.kafka
        await ensure_topics(
            kafka,
            [
                *default_topic_specs(kafka),
                TopicSpec(self.config.source_topic, kafka.partitions, kafka.replication_factor),
                TopicSpec(self.config.rollouts_topic, kafka.partitions, kafka.replication_factor),
                TopicSpec(self.config.deadletter_topic, kafka.partitions, kafka.replication_factor),
            ],
        )
        await asyncio.to_thread(create_schema, parts.store.engine)
        self.server = build_server(self.settings, parts.servicers, self.address)
        await parts.publisher.start()
        # Events a crash left between commit and publish go out first.
        await parts.registry.flush_outbox()
        await self.server.start()
        await parts.consumer.start()
        self._tasks.append(asyncio.create_task(parts.consumer.run(), name="models-trained"))
        log.info("registry_ready", endpoint=self.server.endpoint, group=self.config.group_id)

    @property
    def endpoint(self) -> str:
        assert self.server is not None, "RegistryService.start() was not awaited"
        return self.server.endpoint

    async def stop(self) -> None:
        parts = self.parts
        if self.server is not None:
            await self.server.set_serving(SERVICE_NAME, False)
        parts.consumer.request_stop()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await parts.consumer.stop()
        if self.server is not None:
            await self.server.stop()
        await parts.publisher.stop()
        parts.store.close()

    async def run_until_signal(self) -> int:
        """Serve until SIGTERM/SIGINT (exit 0) or until the consumer cannot go on
        (exit 1, so the supervisor restarts the process and the uncommitted
        record is read again)."""
        return await serve_until_signal(
            "registry",
            self.start,
            self.stop,
            lambda: self._tasks,
            (KafkaError, OSError, RuntimeError, SQLAlchemyError),
        )
