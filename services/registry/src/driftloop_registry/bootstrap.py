"""Composition root of the registry: SQL store, artifact store, publisher,
`models.trained` consumer and the gRPC server, on one event loop.

Nothing opens a file, a socket or a client before `RegistryService.start()`;
tests build it with their own settings (a private home, per-test topics) and
run it in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiokafka.errors import KafkaError
from driftloop.v1 import registry_pb2_grpc
from driftloop_core.artifacts import ArtifactStore
from driftloop_core.grpc.server import GrpcServer, build_server
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

from driftloop_registry.adapters.store import RegistryStore, open_engine
from driftloop_registry.config import RegistrySettings
from driftloop_registry.entrypoints.grpc import RegistryServicer
from driftloop_registry.entrypoints.kafka import TrainedHandler
from driftloop_registry.handlers import Registry

log = structlog.get_logger(__name__)
SERVICE_NAME = "driftloop.v1.RegistryService"


@dataclass
class RegistryService:
    settings: Settings
    config: RegistrySettings
    address: str
    publisher: Publisher = field(init=False)
    store: RegistryStore | None = field(default=None, init=False)
    registry: Registry | None = field(default=None, init=False)
    server: GrpcServer | None = field(default=None, init=False)
    consumer: ConsumerLoop | None = field(default=None, init=False)
    _tasks: list[asyncio.Task[Any]] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.publisher = Publisher(self.settings)

    async def start(self) -> None:
        kafka = self.settings.kafka
        await ensure_topics(
            kafka,
            [
                *default_topic_specs(kafka),
                TopicSpec(self.config.source_topic, kafka.partitions, kafka.replication_factor),
                TopicSpec(self.config.deadletter_topic, kafka.partitions, kafka.replication_factor),
            ],
        )
        engine = await asyncio.to_thread(open_engine, self.config.url_for(self.settings))
        self.store = RegistryStore(engine)
        self.registry = Registry(
            self.store,
            ArtifactStore.from_settings(self.settings),
            self.publisher,
            self.config.gate,
        )
        token = self.settings.admin_token.get_secret_value() if self.settings.admin_token else None
        self.server = build_server(
            self.settings,
            [
                (
                    registry_pb2_grpc.add_RegistryServiceServicer_to_server,
                    RegistryServicer(self.registry, token, self.config.chunk_size),
                    SERVICE_NAME,
                )
            ],
            self.address,
        )
        await self.publisher.start()
        # Events a crash left between commit and publish go out first.
        await self.registry.flush_outbox()
        await self.server.start()
        self.consumer = ConsumerLoop(
            self.settings,
            topics=[self.config.source_topic],
            group_id=self.config.group_id,
            handle=TrainedHandler(self.registry),
            publisher=self.publisher,
            deadletter_topic=self.config.deadletter_topic,
        )
        await self.consumer.start()
        self._tasks.append(asyncio.create_task(self.consumer.run(), name="models-trained"))
        log.info("registry_ready", endpoint=self.server.endpoint, group=self.config.group_id)

    @property
    def endpoint(self) -> str:
        assert self.server is not None, "RegistryService.start() was not awaited"
        return self.server.endpoint

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.set_serving(SERVICE_NAME, False)
        if self.consumer is not None:
            self.consumer.request_stop()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self.consumer is not None:
            await self.consumer.stop()
        if self.server is not None:
            await self.server.stop()
        await self.publisher.stop()
        if self.store is not None:
            self.store.close()

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
