"""The composition root: builds the trainer from its parts, opening nothing yet.

The trainer serves only gRPC health, on `settings.endpoints.trainer`, so that
`driftloop status` sees it. Tests build it with a port-0 address, their own
topic and group, and a Parquet file or a local champion in place of the
feature store and the registry.
"""

from __future__ import annotations

import asyncio
from dataclasses import KW_ONLY, dataclass, field

from aiokafka.errors import KafkaError
from driftloop_core.artifacts import ArtifactStore
from driftloop_core.featureset import FeatureSet
from driftloop_core.grpc.server import GrpcServer, build_server
from driftloop_core.kafka import ConsumerLoop, Publisher, Topics, default_topic_specs, ensure_topics
from driftloop_core.logging import get_logger
from driftloop_core.runtime import serve_until_signal
from driftloop_core.settings import Settings

from driftloop_trainer.adapters.grpc_clients import FeatureServiceTrainingSets, RegistryChampions
from driftloop_trainer.adapters.ledger import RequestLedger
from driftloop_trainer.entrypoints.kafka import GROUP_ID, TrainingRequests, build_consumer
from driftloop_trainer.handlers import TrainingRunner
from driftloop_trainer.ports import ChampionSource, TrainingSetSource
from driftloop_trainer.training import TrainingConfig
from driftloop_trainer.window import WindowWait

log = get_logger(__name__)


@dataclass
class TrainerService:
    """The trainer's running parts, started and stopped together."""

    settings: Settings
    _: KW_ONLY
    publisher: Publisher
    consumer: ConsumerLoop
    server: GrpcServer
    ledger: RequestLedger
    create_topics: bool
    _task: asyncio.Task[None] | None = field(default=None, init=False)
    _stopped: bool = field(default=False, init=False)

    async def start(self) -> None:
        if self.create_topics:
            await ensure_topics(self.settings.kafka, default_topic_specs(self.settings.kafka))
        await self.publisher.start()
        await self.consumer.start()
        await self.server.start()
        self._task = asyncio.create_task(self.consumer.run(), name="consume")
        log.info("trainer_started", health=self.server.endpoint, ledger=str(self.ledger.path))

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        await self.server.health.enter_graceful_shutdown()
        self.consumer.request_stop()
        try:
            if self._task is not None:
                await self._task
        finally:
            await self.consumer.stop()
            await self.server.stop()
            await self.publisher.stop()
            self.ledger.close()
            log.info("trainer_stopped")

    async def run_until_signal(self) -> int:
        """Serve until SIGTERM/SIGINT (0), or until consuming fails (1, restarted)."""
        return await serve_until_signal(
            "trainer",
            self.start,
            self.stop,
            lambda: [self._task] if self._task is not None else [],
            (KafkaError, OSError, RuntimeError),
        )


def build(
    settings: Settings,
    featureset: FeatureSet,
    *,
    training_sets: TrainingSetSource | None = None,
    champions: ChampionSource | None = None,
    config: TrainingConfig | None = None,
    window_wait: WindowWait | None = None,
    grpc_address: str | None = None,
    topic: str = Topics.TRAINING_REQUESTED,
    group_id: str = GROUP_ID,
    deadletter_topic: str = Topics.DEADLETTER,
    create_topics: bool = True,
) -> TrainerService:
    """Assemble the trainer; call it inside the event loop that will run it."""
    runner = TrainingRunner(
        featureset,
        training_sets or FeatureServiceTrainingSets(settings),
        champions or RegistryChampions(settings),
        ArtifactStore.from_settings(settings),
        config or TrainingConfig(),
        window_wait or WindowWait(),
    )
    publisher = Publisher(settings)
    ledger = RequestLedger(settings.home / "trainer" / "requests.sqlite")
    requests = TrainingRequests(runner, publisher, ledger)
    consumer = build_consumer(
        settings,
        requests,
        publisher,
        topic=topic,
        group_id=group_id,
        deadletter_topic=deadletter_topic,
    )
    runner.stopping = consumer.stopping
    server = build_server(settings, [], grpc_address or settings.endpoints.trainer)
    return TrainerService(
        settings,
        publisher=publisher,
        consumer=consumer,
        server=server,
        ledger=ledger,
        create_topics=create_topics,
    )
