"""The Faust application of the feature store: one table, one agent.

The entity table is changelogged to Kafka and kept in RocksDB (through
rocksdict) when it is installed, so a restarted worker gets its state back
exactly. Every topic Faust touches is created up front with the partition
count of `events.valid`: the embedded broker would otherwise auto-create the
changelog with its own count, and Faust then refuses to start the table.
"""

from __future__ import annotations

import importlib.util
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import faust
from driftloop_core.kafka import Outgoing, Record
from driftloop_core.kafka.headers import make_headers, parse_headers
from driftloop_core.kafka.offsets import true_end_offsets
from driftloop_core.kafka.topics import TopicSpec
from driftloop_core.settings import KafkaSettings, Settings
from faust.streams import _current_event
from faust.transport.drivers import aiokafka as aiokafka_driver

APP_ID = "driftloop-features"
TABLE = "entities"
# A whole batch of rows (500 of a few hundred bytes) fits in one producer batch.
PRODUCER_BATCH_BYTES = 256 * 1024


def changelog_topic(app_id: str = APP_ID) -> str:
    return f"{app_id}-{TABLE}-changelog"


def faust_topic_specs(settings: Settings, app_id: str = APP_ID) -> list[TopicSpec]:
    kafka = settings.kafka
    return [
        TopicSpec(
            changelog_topic(app_id),
            kafka.partitions,
            kafka.replication_factor,
            config=(("cleanup.policy", "compact"),),
        ),
    ]


def store_url() -> str:
    return "rocksdb://" if importlib.util.find_spec("rocksdict") else "memory://"


@dataclass
class FeaturesApp:
    """The Faust app, its entity table, and its producer for what the stream publishes."""

    app: faust.App
    table: Any
    source: str
    _topics: dict[str, Any] = field(default_factory=dict)

    async def start(self) -> None:
        await self.app.start()

    async def stop(self) -> None:
        await self.app.stop()

    async def wait_until_stopped(self) -> None:
        """Return when the app stops or crashes."""
        await self.app.wait_until_stopped()

    async def send(self, outgoing: Outgoing) -> None:
        """Hand a record to Faust's producer, with CloudEvents headers and the
        current trace context. It is buffered: Faust flushes its producer before
        it commits the offsets of the events that caused it."""
        topic = self._topics.get(outgoing.topic)
        if topic is None:
            topic = self._topics[outgoing.topic] = self.app.topic(
                outgoing.topic, key_serializer="raw", value_serializer="raw"
            )
        headers = make_headers(
            outgoing.ce_type,
            self.source,
            event_id=outgoing.event_id,
            content_type=outgoing.content_type,
            extra=outgoing.extra_headers,
        )
        key = outgoing.key.encode() if isinstance(outgoing.key, str) else outgoing.key
        await topic.send(key=key, value=outgoing.value, headers=headers.to_kafka())


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


def build_faust_app(
    settings: Settings, *, app_id: str = APP_ID, store_dir: str = "features"
) -> FeaturesApp:
    """The app; `store_dir` (under DRIFTLOOP_HOME/ephemeral) holds its table
    store, one per worker process on a machine."""
    correct_faust_highwaters(settings.kafka)
    options = settings.kafka.faust_options()
    datadir = settings.ephemeral_dir / store_dir
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        app_id,
        **options,
        store=store_url(),
        datadir=str(datadir),
        web_enabled=False,
        topic_allow_declare=False,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        table_standby_replicas=0,
        producer_linger_ms=1,
        # aiokafka holds one batch per partition while a request is in flight,
        # and a send waits once it is full: 16 KiB (the default) is about 40
        # rows, so a batch of events would wait on the broker every 40 rows.
        producer_max_batch_size=PRODUCER_BATCH_BYTES,
        broker_credentials=_credentials(settings),
    )
    table = app.Table(
        TABLE,
        partitions=settings.kafka.partitions,
        key_type=str,
        help="Per-entity feature state: recent events and latest raw fields.",
    )
    return FeaturesApp(app, table, source=f"/driftloop/{settings.service_name}")


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


@contextmanager
def processing(event: Any) -> Iterator[None]:
    """Make `event` the one being processed, for the table writes it causes.

    A Faust table writes a key to the changelog partition, and the RocksDB
    partition, of the event being processed (they match the source's). A
    batch taken with `noack_take` is handled outside the stream's iteration,
    where no event is current; Faust has no public way to name one, so this
    sets the context variable its `current_event()` reads.
    """
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


def record_of(message: Any) -> Record:
    """A Faust message as the record the core consumer hands out."""
    headers = _header_pairs(message.headers)
    return Record(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        value=message.value or b"",
        headers=parse_headers(headers),
        raw_headers=tuple(headers),
        timestamp_ms=int((message.timestamp or 0) * 1000),
    )


def _header_pairs(headers: Any) -> list[tuple[str, bytes]]:
    if headers is None:
        return []
    if isinstance(headers, Mapping):
        return list(headers.items())
    return list(headers)
