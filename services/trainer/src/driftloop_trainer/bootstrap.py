"""The composition root: builds the trainer from its parts, opening nothing yet.

The trainer serves only gRPC health, on `settings.endpoints.trainer`, so that
`driftloop status` sees it. Tests build it with a port-0 address, their own
topic and group, and a Parquet file or a local champion in place of the
feature store and the registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal

from aiokafka.errors import KafkaError
from driftloop_core.artifacts import ArtifactStore
from driftloop_core.featureset import FeatureSet
from driftloop_core.grpc.server import GrpcServer, build_server
from driftloop_core.kafka import Consumer, Publisher, Topics, default_topic_specs, ensure_topics
from driftloop_core.logging import get_logger
from driftloop_core.settings import Settings

from driftloop_trainer.adapters.grpc_clients import FeatureServiceTrainingSets, RegistryChampions
from driftloop_trainer.adapters.ledger import RequestLedger
from driftloop_trainer.entrypoints.kafka import GROUP_ID, TrainingRequests, build_consumer
from driftloop_trainer.handlers import TrainingRunner
from driftloop_trainer.ports import ChampionSource, TrainingSetSource
from driftloop_trainer.training import TrainingConfig

log = get_logger(__name__)


class TrainerService:
    """The trainer's running parts, started and stopped together."""

    def __init__(
        self,
        settings: Settings,
        *,
        publisher: Publisher,
        consumer: Consumer,
        server: GrpcServer,
        ledger: RequestLedger,
        create_topics: bool,
    ) -> None:
        self.settings = settings
        self.publisher = publisher
        self.consumer = consumer
        self.server = server
        self.ledger = ledger
        self._create_topics = create_topics
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    async def start(self) -> None:
        if self._create_topics:
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
        try:
            await self.start()
        except (KafkaError, OSError, RuntimeError) as error:
            log.error("trainer_start_failed", error=repr(error))
            with contextlib.suppress(KafkaError, OSError, RuntimeError):
                await self.stop()
            return 1
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        waiter = asyncio.create_task(stop.wait())
        assert self._task is not None
        try:
            await asyncio.wait([waiter, self._task], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            waiter.cancel()
        if stop.is_set():
            log.info("trainer_signal_received")
        try:
            await self.stop()
        except (KafkaError, OSError) as error:
            log.error("trainer_failed", error=repr(error), exc_info=error)
            return 1
        return 0 if stop.is_set() else 1


def build(
    settings: Settings,
    featureset: FeatureSet,
    *,
    training_sets: TrainingSetSource | None = None,
    champions: ChampionSource | None = None,
    config: TrainingConfig | None = None,
    grpc_address: str | None = None,
    topic: str = Topics.TRAINING_REQUESTED,
    group_id: str = GROUP_ID,
    create_topics: bool = True,
) -> TrainerService:
    """Assemble the trainer; call it inside the event loop that will run it."""
    runner = TrainingRunner(
        featureset,
        training_sets or FeatureServiceTrainingSets(settings),
        champions or RegistryChampions(settings),
        ArtifactStore(settings.artifacts_location),
        config or TrainingConfig(),
    )
    publisher = Publisher(settings)
    ledger = RequestLedger(settings.home / "trainer" / "requests.sqlite")
    requests = TrainingRequests(runner, publisher, ledger)
    consumer = build_consumer(settings, requests, publisher, topic=topic, group_id=group_id)
    server = build_server(settings, [], grpc_address or settings.endpoints.trainer)
    return TrainerService(
        settings,
        publisher=publisher,
        consumer=consumer,
        server=server,
        ledger=ledger,
        create_topics=create_topics,
    )
