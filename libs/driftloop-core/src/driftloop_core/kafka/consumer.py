"""Where Driftloop's aiokafka consumers are made, and what they report.

`group_consumer` is a consumer-group member with Driftloop's delivery settings;
`reader` is a consumer outside any group, for reading or tailing topics by
assignment (drift's stored positions, the CLI's tails). Both are constructed
here only; services consume through `ConsumerLoop` (`loop.py`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import Counter, Gauge

from driftloop_core.kafka.record import PoisonMessage, Record, TransientError
from driftloop_core.settings import Settings

CONSUMED = Counter(
    "driftloop_kafka_consumed_records_total",
    "Records handled by a consumer, by outcome (ok, deadlettered).",
    ["group", "topic", "outcome"],
)
LAG = Gauge(
    "driftloop_kafka_consumer_lag_records",
    "Records between the consumer position and the partition high watermark.",
    ["group", "topic", "partition"],
)


def _client_id(settings: Settings, client_suffix: str) -> str:
    suffix = f"-{client_suffix}" if client_suffix else ""
    return f"{settings.kafka.client_id_prefix}-{settings.service_name}{suffix}"


def group_consumer(
    settings: Settings, *topics: str, group_id: str, client_suffix: str = "", **overrides: Any
) -> AIOKafkaConsumer:
    """An aiokafka group member with Driftloop's delivery settings: manual commits
    after the work is done, from the earliest offset, with the failover timeouts
    of settings. `overrides` tune fetch sizes and batch lengths."""
    kafka = settings.kafka
    options: dict[str, Any] = {
        **kafka.client_options(),
        "group_id": group_id,
        "client_id": _client_id(settings, client_suffix),
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "session_timeout_ms": kafka.session_timeout_ms,
        "heartbeat_interval_ms": kafka.heartbeat_interval_ms,
        "rebalance_timeout_ms": kafka.rebalance_timeout_ms,
        "max_poll_records": kafka.max_poll_records,
    }
    options.update(overrides)
    return AIOKafkaConsumer(*topics, **options)


def reader(settings: Settings, *topics: str, client_suffix: str = "", **overrides: Any) -> Any:
    """A consumer in no group that commits nothing: it reads what it is assigned
    (or subscribed to) from where it is told."""
    options: dict[str, Any] = {
        **settings.kafka.client_options(),
        "group_id": None,
        "client_id": _client_id(settings, client_suffix),
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
    }
    options.update(overrides)
    return AIOKafkaConsumer(*topics, **options)


async def tail(
    settings: Settings, topics: Iterable[str], *, from_end: bool, client_suffix: str = ""
) -> Any:
    """A started `reader` assigned every partition of `topics`, positioned at
    their current end (to follow what comes next) or at their beginning."""
    consumer = reader(settings, client_suffix=client_suffix)
    await consumer.start()
    try:
        await consumer.topics()  # refreshes the metadata partitions_for_topic reads
        partitions = [
            TopicPartition(topic, partition)
            for topic in topics
            for partition in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        consumer.assign(partitions)
        if from_end:
            for tp, offset in (await consumer.end_offsets(partitions)).items():
                consumer.seek(tp, offset)
        else:
            await consumer.seek_to_beginning(*partitions)
    except BaseException:
        await consumer.stop()
        raise
    return consumer


__all__ = [
    "CONSUMED",
    "LAG",
    "PoisonMessage",
    "Record",
    "TransientError",
    "group_consumer",
    "reader",
    "tail",
]
