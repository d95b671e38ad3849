"""Composition root of the drift service: state store, engine, consumer, publisher,
registry client and a health-only gRPC server, on one event loop.

`build` wires the parts and opens nothing: the state file is opened, the
publisher and the consumer connect and the server listens in
`DriftService.start()`. Tests build it with their own settings (a private home,
a unique model, port 0) and run it in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

from aiokafka.errors import KafkaError
from driftloop_core.featureset import FeatureSet
from driftloop_core.grpc.server import GrpcServer, build_server
from driftloop_core.kafka import (
    ConsumerLoop,
    Publisher,
    TopicSpec,
    default_topic_specs,
    ensure_topics,
)
from driftloop_core.logging import get_logger
from driftloop_core.runtime import serve_until_signal
from driftloop_core.settings import Settings

from driftloop_drift.adapters.registry import RegistryReferences
from driftloop_drift.adapters.state import DriftStateStore
from driftloop_drift.application import DriftApplication
from driftloop_drift.config import DriftSettings
from driftloop_drift.entrypoints.kafka import build_consumer
from driftloop_drift.handlers import DriftEngine
from driftloop_drift.outbox import Outbox
from driftloop_drift.ports import References

log = get_logger(__name__)


@dataclass
class DriftService:
    """The drift service's running parts, started and stopped together."""

    settings: Settings
    config: DriftSettings
    _: KW_ONLY
    application: DriftApplication
    consumer: ConsumerLoop
    publisher: Publisher
    server: GrpcServer
    _task: asyncio.Task[None] | None = field(default=None, init=False)
    _stopped: bool = field(default=False, init=False)

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
        await self.publisher.start()
        # Loads the state, publishes what its outbox holds, and seeks to its positions.
        await self.consumer.start()
        await self.application.start()
        await self.server.start()
        self._task = asyncio.create_task(self.consumer.run(), name="drift")
        log.info("drift_ready", health=self.server.endpoint, model=self.application.model)

    @property
    def endpoint(self) -> str:
        return self.server.endpoint

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        await self.server.health.enter_graceful_shutdown()
        self.consumer.request_stop()
        try:
            if self._task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        finally:
            await self.consumer.stop()
            await self.application.close()
            await self.server.stop()
            await self.publisher.stop()
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


def build(
    settings: Settings,
    featureset: FeatureSet,
    config: DriftSettings,
    *,
    grpc_address: str | None = None,
    references: References | None = None,
) -> DriftService:
    """Assemble the drift service; call it inside the event loop that will run it."""
    engine_config = config.engine_config()

    def engine(state: dict[str, Any] | None) -> DriftEngine:
        if state is None:
            return DriftEngine(featureset, engine_config)
        return DriftEngine.from_json(featureset, engine_config, state)

    publisher = Publisher(settings)
    store = DriftStateStore(config.state_file(settings, featureset.name))
    application = DriftApplication(
        engine,
        store,
        Outbox(store, publisher),
        references or RegistryReferences(settings, config.registry_timeout_s),
        snapshot_interval_s=config.snapshot_interval_s,
    )
    return DriftService(
        settings,
        config,
        application=application,
        consumer=build_consumer(
            settings,
            config,
            application,
            publisher,
            max_future_ms=config.max_future_ms(featureset),
        ),
        publisher=publisher,
        server=build_server(settings, [], grpc_address or settings.endpoints.drift),
    )
