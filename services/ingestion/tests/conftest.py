"""Ingestion fixtures: a real ingestion service on the session broker, and readers.

Every test gets its own raw and dead-letter topics and consumer group; valid
events all land on the shared `events.valid`, so tests prefix their event ids
with `unique` and read back only their own.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from confluent_kafka import KafkaException, Producer
from driftloop.v1 import events_pb2
from driftloop_core.featureset import FeatureSet, default_featureset_path, load_featureset
from driftloop_core.kafka.topics import Topics, TopicSpec, ensure_topics
from driftloop_core.settings import Settings
from driftloop_ingestion.bootstrap import IngestionService, build
from driftloop_ingestion.config import IngestionSettings
from driftloop_testing import collect


@dataclass
class ValidRecord:
    key: str
    headers: dict[str, bytes]
    message: events_pb2.Observation | events_pb2.Label
    partition: int
    offset: int


@pytest.fixture
def featureset() -> FeatureSet:
    return load_featureset(default_featureset_path())


@pytest.fixture
def config(unique: str) -> IngestionSettings:
    return IngestionSettings(
        source_topic=f"t.raw.{unique}",
        deadletter_topic=f"t.deadletter.{unique}",
        group_id=f"g.ingestion.{unique}",
        kafka_batch_size=200,
        stream_batch_size=50,
        stream_flush_interval=timedelta(milliseconds=50),
    )


@pytest.fixture
async def topics(settings: Settings, config: IngestionSettings) -> None:
    await ensure_topics(
        settings.kafka,
        [
            TopicSpec(config.source_topic, 2),
            TopicSpec(config.deadletter_topic, 1),
            TopicSpec(Topics.VALID, settings.kafka.partitions),
        ],
    )


Start = Callable[..., Awaitable[IngestionService]]


@pytest.fixture
async def start_service(
    settings: Settings, featureset: FeatureSet, config: IngestionSettings, topics: None
) -> AsyncIterator[Start]:
    """Builds and starts ingestion services (several may run in turn); stops them all."""
    started: list[IngestionService] = []

    async def start(*, consume: bool = True, **overrides: Any) -> IngestionService:
        service = build(
            settings,
            featureset,
            config.model_copy(update=overrides),
            grpc_address="127.0.0.1:0",
            consume=consume,
        )
        await service.start()
        started.append(service)
        return service

    yield start
    for service in started:
        await service.stop()


@pytest.fixture
async def service(start_service: Start) -> IngestionService:
    """A gRPC-only ingestion (no `events.raw` consumer, so no group join to wait for)."""
    return await start_service(consume=False)


class KafkaIO:
    """Plain Kafka clients for tests: a producer like `kcat` and topic readers."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def produce_lines(
        self, topic: str, lines: list[bytes], *, partition: int = 0
    ) -> list[tuple[int, int, int]]:
        """Write raw lines as a plain producer would (no headers, no key);
        return each record's (partition, offset, timestamp)."""
        producer = AIOKafkaProducer(bootstrap_servers=self.settings.kafka.bootstrap_servers)
        await producer.start()
        try:
            positions = []
            for line in lines:
                meta = await producer.send_and_wait(topic, line, partition=partition)
                positions.append((meta.partition, meta.offset, meta.timestamp))
            return positions
        finally:
            await producer.stop()

    async def produce_json(
        self, topic: str, records: list[tuple[str | None, dict[str, Any]]]
    ) -> None:
        """Write (key, JSON body) records with librdkafka (confluent-kafka), as a
        user's producer would, and wait until all are acknowledged."""
        producer = Producer({"bootstrap.servers": self.settings.kafka.bootstrap_servers})
        failed: list[Any] = []

        def delivered(error: Any, _record: Any) -> None:
            if error is not None:
                failed.append(error)

        for key, body in records:
            producer.produce(topic, json.dumps(body).encode(), key=key, on_delivery=delivered)
        left = await asyncio.to_thread(producer.flush, 30)
        if left or failed:
            raise KafkaException(f"{left} records not delivered, errors {failed[:3]}")

    async def read_topic(
        self, topic: str, keep: Callable[[Any], bool], *, at_least: int, quiet_s: float = 0.5
    ) -> list[Any]:
        """Records of `topic` that `keep` accepts: waits until `at_least` arrived,
        then for `quiet_s` more with nothing new, so that extra records show up."""
        return await collect(self.settings, topic, keep, at_least=at_least, quiet_s=quiet_s)

    async def read_valid(
        self, prefix: str, *, at_least: int, quiet_s: float = 0.5
    ) -> list[ValidRecord]:
        """This test's records on events.valid (CloudEvents ids starting with `prefix`)."""

        def mine(record: Any) -> bool:
            return any(
                key == "ce_id" and value.decode().startswith(prefix)
                for key, value in record.headers
            )

        records = await self.read_topic(Topics.VALID, mine, at_least=at_least, quiet_s=quiet_s)
        return [decode_valid(record) for record in records]


def decode_valid(record: Any) -> ValidRecord:
    headers = {key: value for key, value in record.headers}
    ce_type = headers["ce_type"].decode()
    message: events_pb2.Observation | events_pb2.Label
    if ce_type == "driftloop.event.observed.v1":
        message = events_pb2.Observation.FromString(record.value)
    else:
        assert ce_type == "driftloop.event.labelled.v1", ce_type
        message = events_pb2.Label.FromString(record.value)
    return ValidRecord(record.key.decode(), headers, message, record.partition, record.offset)


@pytest.fixture
def kafka_io(settings: Settings) -> KafkaIO:
    return KafkaIO(settings)


@pytest.fixture
def now_ms() -> int:
    return int(time.time() * 1000)
