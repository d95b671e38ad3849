"""The Faust application of the feature store: one table, one agent.

The entity table is changelogged to Kafka and kept in RocksDB (through
rocksdict) when it is installed, so a restarted worker gets its state back
exactly. Every topic Faust touches is created up front with the partition
count of `events.valid`: the embedded broker would otherwise auto-create the
changelog with its own count, and Faust then refuses to start the table.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import faust
from driftloop_core.kafka.consumer import Record
from driftloop_core.kafka.headers import parse_headers
from driftloop_core.kafka.offsets import true_end_offsets
from driftloop_core.kafka.topics import Topics, TopicSpec
from driftloop_core.settings import KafkaSettings, Settings
from faust.transport.drivers import aiokafka as aiokafka_driver

from driftloop_features.stream import StreamHandler

APP_ID = "driftloop-features"
TABLE = "entities"


def changelog_topic() -> str:
    return f"{APP_ID}-{TABLE}-changelog"


def faust_topic_specs(settings: Settings) -> list[TopicSpec]:
    kafka = settings.kafka
    return [
        TopicSpec(
            changelog_topic(),
            kafka.partitions,
            kafka.replication_factor,
            config=(("cleanup.policy", "compact"),),
        ),
    ]


def store_url() -> str:
    return "rocksdb://" if importlib.util.find_spec("rocksdict") else "memory://"


@dataclass
class FeaturesApp:
    app: faust.App
    table: Any

    async def start(self) -> None:
        await self.app.start()

    async def stop(self) -> None:
        await self.app.stop()


def correct_faust_highwaters(kafka: KafkaSettings) -> None:
    """Make Faust's table recovery read changelogs to their real end.

    Recovery stops at the end offsets Faust gets from ListOffsets; the embedded
    broker reports those per record batch (see `driftloop_core.kafka.offsets`),
    so recovery would stop early and lose state, or refuse to start. The
    driver's end-offset query is wrapped to use the corrected offsets; on
    Apache Kafka the correction is a no-op.
    """
    thread = aiokafka_driver.AIOKafkaConsumerThread
    if getattr(thread, "_driftloop_corrected", False):
        return
    reported_highwaters = thread._highwaters

    async def _highwaters(self: Any, partitions: list[Any]) -> Mapping[Any, int]:
        reported = await reported_highwaters(self, partitions)
        if self.consumer.in_transaction:
            return reported
        return await true_end_offsets(kafka, reported)

    setattr(thread, "_highwaters", _highwaters)  # noqa: B010 - patching a method
    setattr(thread, "_driftloop_corrected", True)  # noqa: B010


def build_faust_app(settings: Settings) -> FeaturesApp:
    correct_faust_highwaters(settings.kafka)
    options = settings.kafka.faust_options()
    datadir = settings.ephemeral_dir / "features"
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        APP_ID,
        **options,
        store=store_url(),
        datadir=str(datadir),
        web_enabled=False,
        topic_allow_declare=False,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        table_standby_replicas=0,
        producer_linger_ms=1,
        broker_credentials=_credentials(settings),
    )
    table = app.Table(
        TABLE,
        partitions=settings.kafka.partitions,
        key_type=str,
        help="Per-entity feature state: recent events and latest raw fields.",
    )
    return FeaturesApp(app, table)


def attach_agent(features: FeaturesApp, handler: StreamHandler, settings: Settings) -> None:
    """Run `handler` over `events.valid`, with the record shaped as the core consumer's."""
    topic = features.app.topic(
        Topics.VALID,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.kafka.partitions,
    )

    async def process(stream: Any) -> None:
        async for event in stream.events():
            message = event.message
            await handler.handle(
                Record(
                    topic=message.topic,
                    partition=message.partition,
                    offset=message.offset,
                    key=message.key,
                    value=message.value or b"",
                    headers=parse_headers(_header_pairs(message.headers)),
                    raw_headers=tuple(_header_pairs(message.headers)),
                    timestamp_ms=int((message.timestamp or 0) * 1000),
                )
            )

    features.app.agent(topic, name="driftloop_features.process")(process)


def _header_pairs(headers: Any) -> list[tuple[str, bytes]]:
    if headers is None:
        return []
    if isinstance(headers, Mapping):
        return list(headers.items())
    return list(headers)


def _credentials(settings: Settings) -> Any:
    kafka = settings.kafka
    if kafka.security_protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=kafka.sasl_username,
            password=kafka.sasl_password.get_secret_value() if kafka.sasl_password else None,
            mechanism=kafka.sasl_mechanism or "PLAIN",
            ssl_context=settings.kafka.client_options().get("ssl_context"),
        )
    if kafka.security_protocol == "SSL":
        return faust.SSLCredentials(settings.kafka.client_options()["ssl_context"])
    return None
