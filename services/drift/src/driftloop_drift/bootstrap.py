"""Composition root of the drift service: state store, engine, consumer, publisher,
registry client and a health-only gRPC server, on one event loop.

Nothing opens a file, a socket or a client before `DriftService.start()`;
tests build it with their own settings (a private home, a unique model, port 0)
and run it in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError
from driftloop_core.featureset import FeatureSet
from driftloop_core.grpc.server import GrpcServer, build_server
from driftloop_core.kafka import Publisher, TopicSpec, default_topic_specs, ensure_topics
from driftloop_core.logging import get_logger
from driftloop_core.runtime import serve_until_signal
from driftloop_core.settings import Settings

from driftloop_drift.adapters.registry import RegistryReferences
from driftloop_drift.adapters.state import StateStore
from driftloop_drift.config import DriftSettings
from driftloop_drift.entrypoints.kafka import DriftConsumer
from driftloop_drift.handlers import DriftEngine

log = get_logger(__name__)


class DriftService:
    def __init__(
        self,
        settings: Settings,
        featureset: FeatureSet,
        config: DriftSettings,
        *,
        grpc_address: str | None = None,
    ) -> None:
        self.settings = settings
        self.featureset = featureset
        self.config = config
        self.address = grpc_address or settings.endpoints.drift
        self.publisher = Publisher(settings)
        self.server: GrpcServer | None = None
        self.store: StateStore | None = None
        self.consumer: DriftConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    def _engine(self, state: dict[str, Any] | None) -> DriftEngine:
        engine_config = self.config.engine_config()
        if state is None:
            return DriftEngine(self.featureset, engine_config)
        return DriftEngine.from_json(self.featureset, engine_config, state)

    async def start(self) -> None:
        kafka = self.settings.kafka
        await ensure_topics(
            kafka,
            [
                *default_topic_specs(kafka),
                *(
                    TopicSpec(topic, kafka.partitions, kafka.replication_factor)
                    for topic in (*self.config.source_topics, self.config.deadletter_topic)
                ),
            ],
        )
        self.store = StateStore(self.config.state_file(self.settings, self.featureset.name))
        await self.publisher.start()
        self.consumer = DriftConsumer(
            self._engine,
            self.config,
            AIOKafkaConsumer(
                **kafka.client_options(),
                client_id=f"{kafka.client_id_prefix}-{self.settings.service_name}",
                enable_auto_commit=False,
                max_poll_records=kafka.max_poll_records,
            ),
            self.publisher,
            self.store,
            RegistryReferences(self.settings, self.config.registry_timeout_s),
            self.settings.service_name,
        )
        await self.consumer.start()
        self.server = build_server(self.settings, [], self.address)
        await self.server.start()
        self._task = asyncio.create_task(self.consumer.run(), name="drift")
        log.info("drift_ready", health=self.server.endpoint, model=self.featureset.name)

    @property
    def endpoint(self) -> str:
        assert self.server is not None, "DriftService.start() was not awaited"
        return self.server.endpoint

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self.server is not None:
            await self.server.health.enter_graceful_shutdown()
        if self.consumer is not None:
            self.consumer.request_stop()
        try:
            if self._task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        finally:
            if self.consumer is not None:
                await self.consumer.stop()
            if self.server is not None:
                await self.server.stop()
            await self.publisher.stop()
            if self.store is not None:
                self.store.close()
            log.info("drift_stopped")

    async def run_until_signal(self) -> int:
        """Serve until SIGTERM/SIGINT (0), or until consuming fails (1, restarted)."""
        return await serve_until_signal(
            "drift",
            self.start,
            self.stop,
            lambda: [self._task] if self._task is not None else [],
            (KafkaError, OSError, RuntimeError, sqlite3.Error),
        )
