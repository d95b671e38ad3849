"""Composition root of the inference service.

`build` wires the parts: the model repository (loading through the ONNX
adapter), the batcher, the registry and feature store clients, the predictions
sink, the online arena with its feed (when on), the rollouts' candidate slot
with its listener and shadow scorer (when on), the data plane, the model
lifecycle and the two gRPC servicers over the data plane. `InferenceService`
runs what `build` made: both gRPC services on one port, the promotions and
rollouts listeners, the arena's feed and the predictions sink; nothing opens a
socket before `start`.

Readiness: the overall health ("") is SERVING as soon as the server answers, so
`driftloop status` shows the process up; `inference.GRPCInferenceService` and
`driftloop.v1.Predictor` turn SERVING only once a model version is loaded
(ServerReady says the same), and ModelInfer answers UNAVAILABLE until then;
with the online arena on, `driftloop.v1.Predictor` is SERVING from the start,
since its online learners answer before any version exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from dataclasses import dataclass
from typing import Any

import structlog
from aiokafka.errors import KafkaError
from driftloop.v1 import predictor_pb2_grpc
from driftloop_core.grpc.server import GrpcServer, ServicerRegistration, build_server
from driftloop_core.kafka import ConsumerLoop, Publisher, Topics, TopicSpec, ensure_topics
from driftloop_core.runtime import featureset_for, serve_until_signal
from driftloop_core.settings import Settings
from inference import grpc_service_pb2_grpc as oip_grpc

from driftloop_inference.adapters.arena_feed import build_feed
from driftloop_inference.adapters.feature_replica import EventsReplica, FeatureReplica
from driftloop_inference.adapters.features import FeatureClient
from driftloop_inference.adapters.onnx import load_model
from driftloop_inference.adapters.predictions import PredictionSink
from driftloop_inference.adapters.registry import RegistryClient
from driftloop_inference.batching import Batcher
from driftloop_inference.config import InferenceSettings
from driftloop_inference.dataplane import DataPlane
from driftloop_inference.entrypoints import oip, predictor
from driftloop_inference.entrypoints.promotions import promotion_listener
from driftloop_inference.entrypoints.rollouts import RolloutListener
from driftloop_inference.lifecycle import ModelLifecycle
from driftloop_inference.model import ServedModel, TensorSpec
from driftloop_inference.online.arena import Arena
from driftloop_inference.online.host import ArenaHost
from driftloop_inference.predict import featureset_inputs
from driftloop_inference.repository import ModelRepository
from driftloop_inference.rollouts import Rollouts
from driftloop_inference.shadow import ShadowScorer

log = structlog.get_logger(__name__)
SERVICE_NAMES = (oip.SERVICE_NAME, predictor.SERVICE_NAME)
HOT_METHODS = (
    "/inference.GRPCInferenceService/ModelInfer",
    "/driftloop.v1.Predictor/Predict",
    "/inference.GRPCInferenceService/ServerReady",
    "/inference.GRPCInferenceService/ModelReady",
)


def model_name_for(settings: Settings, config: InferenceSettings) -> str:
    return config.model_name or featureset_for(settings).name


@dataclass
class Parts:
    """Everything `build` wires, handed to `InferenceService`."""

    model_name: str
    repository: ModelRepository
    batcher: Batcher
    registry: RegistryClient
    features: FeatureClient | FeatureReplica
    publisher: Publisher | None
    sink: PredictionSink
    plane: DataPlane
    lifecycle: ModelLifecycle
    servicers: list[ServicerRegistration]
    # The online arena and its feed; None when it is off.
    arena: ArenaHost | None = None
    feed: ConsumerLoop | None = None
    # The in-process replica of the entity table; None when lookups are remote.
    replica: FeatureReplica | None = None
    # The open rollout's candidate, its listener and its shadow scoring; None
    # when rollouts are not followed.
    rollouts: Rollouts | None = None
    rollout_listener: RolloutListener | None = None
    shadow: ShadowScorer | None = None


def build(
    settings: Settings,
    config: InferenceSettings,
    *,
    registry_address: str | None = None,
    features_address: str | None = None,
    model_name: str = "",
) -> Parts:
    """The service's parts, wired; no client connects and no task starts here."""
    model_name = model_name or model_name_for(settings, config)
    load = functools.partial(
        load_model,
        intra_op_threads=config.intra_op_threads,
        inter_op_threads=config.inter_op_threads,
        probe_rows=config.max_batch_size,
    )
    repository = ModelRepository(model_name, load)
    batcher = Batcher(
        enabled=config.batching,
        max_batch_size=config.max_batch_size,
        max_queue_delay_us=config.max_queue_delay_us,
        capacity=config.queue_capacity,
        inline_run_us=config.inline_run_us,
    )
    registry = RegistryClient(
        settings, registry_address or settings.endpoints.registry, config.registry_timeout_s
    )
    features = FeatureClient(
        settings, features_address or settings.endpoints.features, config.feature_lookup_timeout_s
    )
    publisher = Publisher(settings) if config.events else None
    replica: FeatureReplica | None = None
    online: FeatureClient | FeatureReplica = features
    if config.features_source == "replica" and publisher is not None:
        online = replica = FeatureReplica(
            settings,
            featureset_for(settings),
            config.features_changelog,
            features,
            publisher,
            decoded_cache=config.features_decoded_cache,
            broker_check_s=config.features_broker_check_s,
        )
    elif config.features_source == "events" and publisher is not None:
        online = replica = EventsReplica(
            settings,
            featureset_for(settings),
            config.features_events_topic,
            features,
            publisher,
            broker_check_s=config.features_broker_check_s,
        )
    sink = PredictionSink(publisher, config.predictions_topic, config.prediction_buffer)
    arena: ArenaHost | None = None
    feed: ConsumerLoop | None = None
    inputs: tuple[TensorSpec, ...] = ()
    if config.arena_on and publisher is not None:
        arena = ArenaHost(
            model_name,
            Arena(config.arena_config()),
            lambda: repository.current.version if repository.current is not None else None,
        )
        feed = build_feed(settings, config.arena_topics, arena, publisher)
        inputs = featureset_inputs(featureset_for(settings))
    rollouts: Rollouts | None = None
    listener: RolloutListener | None = None
    shadow: ShadowScorer | None = None
    if config.follows_rollouts and publisher is not None:
        rollouts = Rollouts(model_name, load, registry.download)
        # A promoted candidate is swapped in as loaded, not downloaded again.
        repository.use_preloaded(rollouts.preloaded)
        repository.on_change(rollouts.champion_changed)
        listener = RolloutListener(settings, config.rollouts_topic, rollouts, publisher)
        shadow = ShadowScorer(rollouts, batcher, sink, config.feature_defaults)
    plane = DataPlane(repository, batcher, online, sink, config, arena, inputs, shadow)
    servicers: list[ServicerRegistration] = [
        (
            oip_grpc.add_GRPCInferenceServiceServicer_to_server,
            oip.InferenceServicer(plane),
            oip.SERVICE_NAME,
        ),
        (
            predictor_pb2_grpc.add_PredictorServicer_to_server,
            predictor.PredictorServicer(plane),
            predictor.SERVICE_NAME,
        ),
    ]
    return Parts(
        model_name=model_name,
        repository=repository,
        batcher=batcher,
        registry=registry,
        features=online,
        publisher=publisher,
        sink=sink,
        plane=plane,
        lifecycle=ModelLifecycle(model_name, repository, registry, config),
        servicers=servicers,
        arena=arena,
        feed=feed,
        replica=replica,
        rollouts=rollouts,
        rollout_listener=listener,
        shadow=shadow,
    )


class InferenceService:
    """Starts, serves and stops the parts `build` wired (or the `parts` given)."""

    def __init__(
        self,
        settings: Settings,
        config: InferenceSettings,
        address: str,
        registry_address: str | None = None,
        features_address: str | None = None,
        model_name: str = "",
        parts: Parts | None = None,
    ) -> None:
        self.settings = settings
        self.config = config
        self.address = address
        self.parts = parts or build(
            settings,
            config,
            registry_address=registry_address,
            features_address=features_address,
            model_name=model_name,
        )
        self.server: GrpcServer | None = None
        self.listener: ConsumerLoop | None = None
        self._loader: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[Any]] = []

    @property
    def model_name(self) -> str:
        return self.parts.model_name

    @property
    def repository(self) -> ModelRepository:
        return self.parts.repository

    async def start(self) -> None:
        parts, config = self.parts, self.config
        parts.batcher.start()
        parts.repository.on_change(self._model_changed)
        self.server = build_server(
            _served_settings(self.settings, config),
            parts.servicers,
            self.address,
            reuse_port=config.reuse_port or config.workers > 1,
            untraced_roots=HOT_METHODS,
        )
        if parts.publisher is not None:
            kafka = self.settings.kafka
            await ensure_topics(
                kafka,
                [
                    TopicSpec(topic, kafka.partitions, kafka.replication_factor)
                    for topic in (
                        config.predictions_topic,
                        config.promotions_topic,
                        *(config.arena_topics if parts.feed is not None else ()),
                        *((config.rollouts_topic,) if parts.rollout_listener is not None else ()),
                    )
                ],
            )
            await parts.publisher.start()
            parts.sink.start()
        if parts.replica is not None:
            await parts.replica.start()
            self._tasks.append(
                asyncio.create_task(parts.replica.loop.run(), name="features-replica")
            )
            self._tasks.append(
                asyncio.create_task(parts.replica.watch_broker(), name="features-replica-broker")
            )
        if parts.feed is not None:
            # Positioned at the end before the first Predict, so the arena sees
            # every prediction this process serves.
            await parts.feed.start()
            self._tasks.append(asyncio.create_task(parts.feed.run(), name="arena-feed"))
        await self.server.start()
        for name in SERVICE_NAMES:
            await self.server.set_serving(name, self._serving(name))
        if config.events and config.follow_promotions:
            assert parts.publisher is not None  # events are on
            self.listener = promotion_listener(
                self.settings,
                config.promotions_topic,
                parts.model_name,
                config.group_prefix,
                parts.lifecycle.promoted,
                parts.publisher,
                deadletter_topic=Topics.DEADLETTER,
                # A configured file is served until a promotion replaces it,
                # whatever the registry's champion.
                on_reassigned=parts.lifecycle.reassigned if config.model_file is None else None,
            )
            await self.listener.start()
            self._tasks.append(asyncio.create_task(self.listener.run(), name="promotions"))
        if parts.rollout_listener is not None:
            # Reads the topic from its beginning: a rollout open before this
            # process started is shadowed too once it has caught up.
            await parts.rollout_listener.start()
            self._tasks.append(
                asyncio.create_task(parts.rollout_listener.loop.run(), name="rollouts")
            )
        # Background: the server already answers (not ready) while the model loads.
        self._loader = asyncio.create_task(parts.lifecycle.initial_load(), name="initial-load")
        log.info("inference_started", endpoint=self.server.endpoint, model=parts.model_name)

    def _serving(self, name: str) -> bool:
        # With the arena on, Predict answers before any version is loaded.
        if name == predictor.SERVICE_NAME and self.parts.arena is not None:
            return True
        return self.parts.repository.ready

    async def _model_changed(self, model: ServedModel) -> None:
        if self.server is not None:
            for name in SERVICE_NAMES:
                await self.server.set_serving(name, True)

    @property
    def endpoint(self) -> str:
        assert self.server is not None, "InferenceService.start() was not awaited"
        return self.server.endpoint

    async def wait_ready(self, timeout_s: float = 30.0) -> None:
        async with asyncio.timeout(timeout_s):
            await self.parts.repository.loaded_event.wait()

    async def stop(self) -> None:
        parts = self.parts
        if self.server is not None:
            for name in SERVICE_NAMES:
                await self.server.set_serving(name, False)
        if self._loader is not None:
            self._loader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loader
        if self.listener is not None:
            self.listener.request_stop()
        if parts.feed is not None:
            parts.feed.request_stop()
        if parts.replica is not None:
            parts.replica.loop.request_stop()
        if parts.rollout_listener is not None:
            parts.rollout_listener.loop.request_stop()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self.server is not None:
            await self.server.stop()
        if parts.shadow is not None:
            # Before the batcher and the sink stop: their last shadows still go out.
            await parts.shadow.stop()
        await parts.batcher.stop()
        await parts.sink.stop()
        if self.listener is not None:
            await self.listener.stop()
        if parts.feed is not None:
            await parts.feed.stop()
        if parts.replica is not None:
            await parts.replica.loop.stop()
        if parts.rollout_listener is not None:
            await parts.rollout_listener.loop.stop()
        if parts.publisher is not None:
            await parts.publisher.stop()
        await parts.registry.close()
        await parts.features.close()

    async def run_until_signal(self) -> int:
        return await serve_until_signal(
            "inference",
            self.start,
            self.stop,
            lambda: self._tasks,
            (KafkaError, OSError, RuntimeError),
        )


# Room for a request's envelope (ids, parameters, names) beyond its tensor bytes.
_ENVELOPE_BYTES = 1024 * 1024


def _served_settings(settings: Settings, config: InferenceSettings) -> Settings:
    """The server's settings with a message limit just above the largest request
    the data plane accepts: gRPC reads a whole message before any handler sees
    it, so a larger one must be refused by the transport, not after parsing."""
    limit = min(settings.grpc.max_message_bytes, config.max_request_bytes + _ENVELOPE_BYTES)
    return settings.model_copy(
        update={"grpc": settings.grpc.model_copy(update={"max_message_bytes": limit})}
    )
