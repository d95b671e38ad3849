"""Composition root of the inference service: model repository, batcher, both
gRPC services on one port, the promotions listener and the predictions sink.

Readiness: the overall health ("") is SERVING as soon as the server answers, so
`driftloop status` shows the process up; `inference.GRPCInferenceService` and
`driftloop.v1.Predictor` turn SERVING only once a model version is loaded
(ServerReady says the same), and ModelInfer answers UNAVAILABLE until then.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

import grpc.aio
import structlog
from aiokafka.errors import KafkaError
from driftloop.v1 import events_pb2, predictor_pb2_grpc
from driftloop_core.grpc.server import GrpcServer, build_server
from driftloop_core.kafka import Publisher, Topics, TopicSpec, ensure_topics
from driftloop_core.kafka.deadletter import DeadLetterWriter
from driftloop_core.runtime import featureset_for, serve_until_signal
from driftloop_core.settings import Settings
from inference import grpc_service_pb2_grpc as oip_grpc

from driftloop_inference.adapters.features import FeatureClient
from driftloop_inference.adapters.registry import RegistryClient
from driftloop_inference.batching import Batcher
from driftloop_inference.config import InferenceSettings
from driftloop_inference.entrypoints import oip, predictor
from driftloop_inference.entrypoints.promotions import PromotionListener
from driftloop_inference.metrics import PROMOTION_CATCH_UPS
from driftloop_inference.model import LoadedModel
from driftloop_inference.predictions import PredictionSink
from driftloop_inference.repository import ModelRepository

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
class InferenceService:
    settings: Settings
    config: InferenceSettings
    address: str
    registry_address: str | None = None
    features_address: str | None = None
    model_name: str = ""
    repository: ModelRepository = field(init=False)
    batcher: Batcher = field(init=False)
    sink: PredictionSink = field(init=False)
    server: GrpcServer | None = field(default=None, init=False)
    registry: RegistryClient = field(init=False)
    features: FeatureClient = field(init=False)
    publisher: Publisher | None = field(default=None, init=False)
    listener: PromotionListener | None = field(default=None, init=False)
    # Promotions received, so a catch-up after a rejoin knows one came after it.
    _promotions_received: int = field(default=0, init=False)
    _tasks: list[asyncio.Task[Any]] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.model_name = self.model_name or model_name_for(self.settings, self.config)
        self.repository = ModelRepository(self.model_name, self.config)
        self.batcher = Batcher(
            enabled=self.config.batching,
            max_batch_size=self.config.max_batch_size,
            max_queue_delay_us=self.config.max_queue_delay_us,
            capacity=self.config.queue_capacity,
            inline_run_us=self.config.inline_run_us,
        )
        self.registry = RegistryClient(
            self.settings,
            self.registry_address or self.settings.endpoints.registry,
            self.config.registry_timeout_s,
        )
        self.features = FeatureClient(
            self.settings,
            self.features_address or self.settings.endpoints.features,
            self.config.feature_lookup_timeout_s,
        )
        if self.config.events:
            self.publisher = Publisher(self.settings)
        self.sink = PredictionSink(
            self.publisher, self.config.predictions_topic, self.config.prediction_buffer
        )

    async def start(self) -> None:
        self.batcher.start()
        self.repository.on_change(self._model_changed)
        self.server = build_server(
            self.settings,
            [
                (
                    oip_grpc.add_GRPCInferenceServiceServicer_to_server,
                    oip.InferenceServicer(self.repository, self.batcher),
                    oip.SERVICE_NAME,
                ),
                (
                    predictor_pb2_grpc.add_PredictorServicer_to_server,
                    predictor.PredictorServicer(
                        self.repository, self.batcher, self.features, self.sink, self.config
                    ),
                    predictor.SERVICE_NAME,
                ),
            ],
            self.address,
            reuse_port=self.config.reuse_port or self.config.workers > 1,
            untraced_roots=HOT_METHODS,
        )
        if self.publisher is not None:
            kafka = self.settings.kafka
            await ensure_topics(
                kafka,
                [
                    TopicSpec(topic, kafka.partitions, kafka.replication_factor)
                    for topic in (self.config.predictions_topic, self.config.promotions_topic)
                ],
            )
            await self.publisher.start()
            self.sink.start()
        await self.server.start()
        for name in SERVICE_NAMES:
            await self.server.set_serving(name, self.repository.ready)
        if self.config.events and self.config.follow_promotions:
            self.listener = PromotionListener(
                self.settings,
                self.config.promotions_topic,
                self.model_name,
                self.config.group_prefix,
                self._promoted,
                DeadLetterWriter(self.publisher, Topics.DEADLETTER, self.settings.service_name)
                if self.publisher is not None
                else None,
                # A configured file is served until a promotion replaces it,
                # whatever the registry's champion.
                on_reassigned=self._reassigned if self.config.model_file is None else None,
            )
            await self.listener.start()
            self._tasks.append(asyncio.create_task(self.listener.run(), name="promotions"))
        # Background: the server already answers (not ready) while the model loads.
        self._loader = asyncio.create_task(self._initial_load(), name="initial-load")
        log.info("inference_started", endpoint=self.server.endpoint, model=self.model_name)

    async def _model_changed(self, model: LoadedModel) -> None:
        if self.server is not None:
            for name in SERVICE_NAMES:
                await self.server.set_serving(name, True)

    async def _promoted(self, promoted: events_pb2.ModelPromoted) -> None:
        self._promotions_received += 1
        await self.repository.load_version(
            promoted.to_version, promoted.artifact.sha256, self.registry.download
        )

    async def _reassigned(self) -> None:
        """The promotions consumer rejoined its group and starts past whatever was
        published while it was out: load the registry's champion if it is not the
        served version, through the same verified path as a promotion.

        A promotion received after the rejoin is at least as new as the
        registry's answer and is followed by every later one, so it ends the
        check (and its answer is not applied). Unreachable, the registry is
        asked again every `retry_interval_s`; the served version keeps serving.
        """
        received = self._promotions_received
        champion = None
        while self._promotions_received == received:
            try:
                champion = await self.registry.champion(self.model_name)
                break
            except grpc.aio.AioRpcError as error:
                PROMOTION_CATCH_UPS.labels(self.model_name, "registry_unavailable").inc()
                log.warning(
                    "promotion_catch_up_lookup_failed",
                    model=self.model_name,
                    code=error.code().name,
                    details=error.details(),
                    retry_in_s=self.config.retry_interval_s,
                )
            await asyncio.sleep(self.config.retry_interval_s)
        if self._promotions_received != received:
            PROMOTION_CATCH_UPS.labels(self.model_name, "superseded").inc()
            return
        if champion is None:
            PROMOTION_CATCH_UPS.labels(self.model_name, "no_champion").inc()
            return
        serving = self.repository.current.version if self.repository.current else None
        # No await between the check above and load_version queueing on the
        # repository's lock: a promotion received later is applied after this.
        loaded = await self.repository.load_version(
            champion.version, champion.artifact.sha256, self.registry.download
        )
        outcome = "load_failed" if not loaded else "current"
        if loaded and serving != champion.version:
            outcome = "loaded"
            log.info(
                "promotion_caught_up",
                model=self.model_name,
                version=champion.version,
                previous=serving,
            )
        PROMOTION_CATCH_UPS.labels(self.model_name, outcome).inc()

    async def _initial_load(self) -> None:
        """The configured file, else the registry's champion, retried until one loads."""
        if self.config.model_file is not None:
            data = await asyncio.to_thread(self.config.model_file.read_bytes)
            await self.repository.load_bytes(self.config.model_file_version, data, None)
            return
        while not self.repository.ready:
            try:
                champion = await self.registry.champion(self.model_name)
            except grpc.aio.AioRpcError as error:
                log.warning(
                    "champion_lookup_failed",
                    model=self.model_name,
                    code=error.code().name,
                    details=error.details(),
                )
                champion = None
            else:
                if champion is None:
                    log.info("no_champion_yet", model=self.model_name)
            if champion is not None and not self.repository.ready:
                loaded = await self.repository.load_version(
                    champion.version, champion.artifact.sha256, self.registry.download
                )
                if loaded:
                    return
            await asyncio.sleep(self.config.retry_interval_s)

    @property
    def endpoint(self) -> str:
        assert self.server is not None, "InferenceService.start() was not awaited"
        return self.server.endpoint

    async def wait_ready(self, timeout_s: float = 30.0) -> None:
        async with asyncio.timeout(timeout_s):
            await self.repository.loaded_event.wait()

    async def stop(self) -> None:
        if self.server is not None:
            for name in SERVICE_NAMES:
                await self.server.set_serving(name, False)
        loader = getattr(self, "_loader", None)
        if loader is not None:
            loader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loader
        if self.listener is not None:
            self.listener.request_stop()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self.server is not None:
            await self.server.stop()
        await self.batcher.stop()
        await self.sink.stop()
        if self.listener is not None:
            await self.listener.stop()
        if self.publisher is not None:
            await self.publisher.stop()
        await self.registry.close()
        await self.features.close()

    async def run_until_signal(self) -> int:
        return await serve_until_signal(
            "inference",
            self.start,
            self.stop,
            lambda: self._tasks,
            (KafkaError, OSError, RuntimeError),
        )
