"""Composition root of the feature store: Faust stream, offline sink, gRPC server.

All three share one event loop and one entity state; nothing opens a socket or
a file before `FeatureStore.start()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from dataclasses import dataclass, field
from typing import Any

import structlog
from driftloop.v1 import features_pb2_grpc
from driftloop_core.featureset import FeatureSet
from driftloop_core.grpc.server import GrpcServer, build_server
from driftloop_core.kafka import Publisher, ensure_topics
from driftloop_core.kafka.topics import default_topic_specs
from driftloop_core.settings import Settings

from driftloop_features.app import FeaturesApp, attach_agent, build_faust_app, faust_topic_specs
from driftloop_features.domain import EntityState, FeatureMath
from driftloop_features.entrypoints.grpc import FeatureServicer
from driftloop_features.offline import OfflineSink, OfflineStore
from driftloop_features.stream import StreamHandler

log = structlog.get_logger(__name__)
SERVICE_NAME = "driftloop.v1.FeatureService"


@dataclass
class FeatureStore:
    settings: Settings
    featureset: FeatureSet
    address: str
    faust: FeaturesApp = field(init=False)
    handler: StreamHandler = field(init=False)
    server: GrpcServer = field(init=False)
    sink: OfflineSink = field(init=False)
    publisher: Publisher = field(init=False)
    recovered: bool = field(default=False, init=False)
    _tasks: list[asyncio.Task[Any]] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        math = FeatureMath(self.featureset)
        self.faust = build_faust_app(self.settings)
        topics: dict[str, Any] = {}

        async def send(
            topic: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]]
        ) -> None:
            target = topics.get(topic)
            if target is None:
                target = topics[topic] = self.faust.app.topic(
                    topic, key_serializer="raw", value_serializer="raw"
                )
            await target.send(key=key, value=value, headers=headers)

        self.handler = StreamHandler(math, self.faust.table, send, service="features")
        attach_agent(self.faust, self.handler, self.settings)
        self.publisher = Publisher(self.settings)
        self.sink = OfflineSink(self.settings, self.featureset, publisher=self.publisher)
        servicer = FeatureServicer(
            math,
            self._state_of,
            OfflineStore(self.settings, self.featureset),
            ready=lambda: self.recovered,
        )
        self.server = build_server(
            self.settings,
            [(features_pb2_grpc.add_FeatureServiceServicer_to_server, servicer, SERVICE_NAME)],
            self.address,
            # The lookup path is traced inside its caller's trace (inference's
            # Predict) but starts none of its own at thousands of calls a second.
            untraced_roots=[f"/{SERVICE_NAME}/GetOnlineFeatures"],
        )

    def _state_of(self, entity_id: str) -> EntityState | None:
        state = self.handler.cache.get(entity_id)
        return state if state is not None and state.events else None

    async def start(self) -> None:
        kafka = self.settings.kafka
        await ensure_topics(kafka, default_topic_specs(kafka) + faust_topic_specs(self.settings))
        await self.publisher.start()
        await self.server.start()
        # Not ready until the table is recovered: lookups would be wrong before.
        await self.server.set_serving(SERVICE_NAME, False)
        await self.server.set_serving("", False)
        await self.faust.start()
        await self.sink.start()
        self._tasks.append(asyncio.create_task(self.sink.run(), name="offline-sink"))
        self._tasks.append(asyncio.create_task(self._ready_after_recovery(), name="recovery"))

    async def _ready_after_recovery(self) -> None:
        tables: Any = self.faust.app.tables
        await tables.recovery.completed.wait()
        # Lookups are served from memory: load every recovered entity once
        # (the stream writes through from here on), so no lookup waits on the
        # table store. The stream resumed when recovery completed: what it has
        # cached since is newer than the table and stays.
        loaded = self.handler.load_all()
        # What is loaded now lives as long as the process: keep the cyclic
        # garbage collector from walking it again and again (p99 pauses).
        gc.freeze()
        log.info("features_states_loaded", entities=loaded)
        self.recovered = True
        await self.server.set_serving(SERVICE_NAME, True)
        await self.server.set_serving("", True)
        log.info("features_ready", endpoint=self.server.endpoint)

    async def stop(self) -> None:
        await self.server.set_serving(SERVICE_NAME, False)
        self.sink.request_stop()
        for task in self._tasks:
            if task.get_name() == "recovery":
                task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.sink.stop()
        await self.faust.stop()
        await self.server.stop()
        await self.publisher.stop()
