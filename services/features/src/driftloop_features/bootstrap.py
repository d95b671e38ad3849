"""Composition root of the feature store: Faust stream, offline sink, gRPC server.

All three share one event loop and one entity state. `build()` wires the parts
and opens nothing; `FeatureStore.start()` connects them, and
`run_until_signal()` serves until SIGTERM/SIGINT or until a background part
(the offline sink, the Faust agent) cannot go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from aiokafka.errors import KafkaError
from driftloop.v1 import features_pb2_grpc
from driftloop_core.feature_math import EntityState, FeatureMath
from driftloop_core.featureset import FeatureSet
from driftloop_core.grpc.server import GrpcServer, build_server
from driftloop_core.kafka import Publisher, Topics, TopicSpec, ensure_topics
from driftloop_core.kafka.deadletter import DeadLetterWriter
from driftloop_core.kafka.topics import default_topic_specs
from driftloop_core.runtime import serve_until_signal
from driftloop_core.settings import Settings

from driftloop_features.adapters.duckdb_reader import OfflineStore
from driftloop_features.adapters.faust_app import (
    APP_ID,
    FeaturesApp,
    build_faust_app,
    changelog_topic,
    faust_topic_specs,
)
from driftloop_features.config import FeaturesSettings, load_features_settings
from driftloop_features.entrypoints.events import EventsAgent, StreamAgent
from driftloop_features.entrypoints.grpc import FeatureServicer
from driftloop_features.entrypoints.offline_sink import DEFAULT_GROUP, OfflineSink
from driftloop_features.routing import Forwarder, Ownership, Routes
from driftloop_features.stream import StreamHandler

log = structlog.get_logger(__name__)
SERVICE_NAME = "driftloop.v1.FeatureService"
# The failures that mean "restart me"; anything else is a bug.
RESTART_ON = (KafkaError, OSError, RuntimeError)


@dataclass
class Recovery:
    """Whether the entity table is recovered and loaded: lookups wait for it."""

    done: bool = False


def state_lookup(handler: StreamHandler) -> Callable[[str], EntityState | None]:
    """The state a lookup reads: the stream's, once it holds an event."""

    def state_of(entity_id: str) -> EntityState | None:
        state = handler.known(entity_id)
        return state if state is not None and state.events else None

    return state_of


def forget_on_revoke(faust: FeaturesApp, handler: StreamHandler) -> None:
    """Drop the states held in memory whenever the group takes partitions away.

    Faust sends the signal once the agent has acked what it took and the
    producer is flushed, so no batch is half counted; lookups and the stream
    read the states again from the table, recovered for what this worker owns.
    """

    async def on_revoked(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        revoked = args[0] if args else kwargs.get("revoked")
        if revoked:
            handler.forget_all()
            log.info("features_partitions_revoked", partitions=len(revoked))

    faust.app.on_partitions_revoked.connect(on_revoked)


class FeatureStore:
    """The running feature store; `tasks` are the background work it watches."""

    def __init__(
        self,
        settings: Settings,
        *,
        faust: FeaturesApp,
        app_id: str,
        handler: StreamHandler,
        stream: StreamAgent,
        sink: OfflineSink,
        publisher: Publisher,
        server: GrpcServer,
        recovery: Recovery,
        topics: list[TopicSpec],
        routes: Routes,
        config: FeaturesSettings,
    ) -> None:
        self.settings = settings
        self.faust = faust
        self.app_id = app_id
        self.handler = handler
        self.stream = stream
        self.sink = sink
        self.publisher = publisher
        self.server = server
        self.recovery = recovery
        self.routes = routes
        self.config = config
        # What must run for as long as the service does: one ending is a failure.
        self.tasks: list[asyncio.Task[Any]] = []
        self._recovery_task: asyncio.Task[None] | None = None
        self._topics = topics

    async def start(self) -> None:
        await ensure_topics(self.settings.kafka, self._topics)
        await self.publisher.start()
        await self.server.start()
        # Not ready until the table is recovered: lookups would be wrong before.
        await self.server.set_serving(SERVICE_NAME, False)
        await self.server.set_serving("", False)
        # The group learns where this worker answers for its partitions.
        route_port = self.server.extra_ports[0] if self.server.extra_ports else self.server.port
        self.routes.ownership.announce(self.config.route_host, route_port)
        log.info(
            "features_worker",
            worker=self.config.worker,
            lookups=self.server.endpoint,
            route=self.routes.ownership.me,
        )
        await self.faust.start()
        await self.sink.start()
        self.tasks.append(asyncio.create_task(self.sink.run(), name="offline-sink"))
        self.tasks.append(asyncio.create_task(self._watch_faust(), name="faust-worker"))
        # Not watched: it ends, done, once the table is recovered.
        self._recovery_task = asyncio.create_task(self._ready_after_recovery(), name="recovery")

    async def _watch_faust(self) -> None:
        """End (raising) when the agent meets an error it cannot retry, or when
        the Faust worker stops or crashes on its own."""
        failed = asyncio.ensure_future(self.stream.wait_failed())
        stopped = asyncio.ensure_future(self.faust.wait_until_stopped())
        try:
            await asyncio.wait([failed, stopped], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (failed, stopped):
                waiter.cancel()
        if failed.done() and not failed.cancelled():
            error = failed.result()
            raise RuntimeError(f"the events.valid agent failed: {error!r}") from error
        raise RuntimeError("the Faust worker stopped")

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
        self.recovery.done = True
        await self.server.set_serving(SERVICE_NAME, True)
        await self.server.set_serving("", True)
        log.info("features_ready", endpoint=self.server.endpoint)

    async def stop(self) -> None:
        await self.server.set_serving(SERVICE_NAME, False)
        self.sink.request_stop()
        self.stream.request_stop()
        if self._recovery_task is not None:
            self._recovery_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._recovery_task
        for task in self.tasks:
            if task.get_name() != "offline-sink":
                task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                try:
                    await task
                except RESTART_ON as error:
                    log.error("features_task_failed", task=task.get_name(), error=repr(error))
        self.tasks.clear()
        await self.sink.stop()
        await self.faust.stop()
        await self.server.stop()
        await self.routes.forwarder.close()
        await self.publisher.stop()

    async def run_until_signal(self) -> int:
        """Serve until SIGTERM/SIGINT (0), or until the offline sink or the Faust
        agent cannot go on (1: restarted, and what was not committed is read again)."""
        return await serve_until_signal(
            "features", self.start, self.stop, lambda: self.tasks, RESTART_ON
        )


def build(
    settings: Settings,
    featureset: FeatureSet,
    address: str | None = None,
    *,
    app_id: str = APP_ID,
    source_topic: str = Topics.VALID,
    offline_topic: str = Topics.FEATURES_OFFLINE,
    offline_group: str = DEFAULT_GROUP,
    deadletter_topic: str = Topics.DEADLETTER,
    config: FeaturesSettings | None = None,
) -> FeatureStore:
    """The feature store, wired; nothing connects and no file opens here. The
    topics and the Faust app id are parameters so tests can run stores side by side."""
    kafka = settings.kafka
    config = config or load_features_settings()
    math = FeatureMath(featureset)
    faust = build_faust_app(
        settings,
        app_id=app_id,
        store_dir="features" if config.worker == 0 else f"features-{config.worker}",
    )
    ownership = Ownership(faust.app, changelog_topic(app_id), kafka.partitions)
    routes = Routes(ownership, Forwarder(settings, ownership, config.route_timeout_s))
    publisher = Publisher(settings)
    handler = StreamHandler(math, faust.table, offline_topic=offline_topic)
    forget_on_revoke(faust, handler)
    deadletters = DeadLetterWriter(publisher, deadletter_topic, settings.service_name)
    stream = StreamAgent(
        EventsAgent(handler, faust.send, deadletters.write_many, group=app_id), kafka
    )
    stream.attach(faust, topic=source_topic)
    sink = OfflineSink(
        settings,
        featureset,
        publisher,
        topic=offline_topic,
        group_id=offline_group,
        deadletter_topic=deadletter_topic,
    )
    recovery = Recovery()
    servicer = FeatureServicer(
        math,
        state_lookup(handler),
        OfflineStore(settings, featureset),
        ready=lambda: recovery.done,
        routes=routes,
    )
    server = build_server(
        settings,
        [(features_pb2_grpc.add_FeatureServiceServicer_to_server, servicer, SERVICE_NAME)],
        address or settings.endpoints.features,
        # The lookup path is traced inside its caller's trace (inference's
        # Predict) but starts none of its own at thousands of calls a second.
        untraced_roots=[f"/{SERVICE_NAME}/GetOnlineFeatures"],
        reuse_port=config.reuse_port,
        # A port of its own only when the lookup port is shared or one is set;
        # else the lookup port is this worker's alone and names it.
        extra_addresses=[config.route_address] if config.own_route_port else [],
    )
    extra = {source_topic, offline_topic, deadletter_topic} - set(Topics.all())
    topics = [
        *default_topic_specs(kafka),
        *faust_topic_specs(settings, app_id),
        *(TopicSpec(name, kafka.partitions, kafka.replication_factor) for name in sorted(extra)),
    ]
    return FeatureStore(
        settings,
        faust=faust,
        app_id=app_id,
        handler=handler,
        stream=stream,
        sink=sink,
        publisher=publisher,
        server=server,
        recovery=recovery,
        topics=topics,
        routes=routes,
        config=config,
    )
