"""End offsets that are right on the embedded broker too.

Tansu answers a ListOffsets(latest) request with the base offset of the last
record batch plus one, not the offset after the last record: five records sent
in one batch report an end offset of 1. Fetch responses carry the right high
watermark. Whoever must read a partition to its end (a table being recovered
from its changelog) asks here: the reported end offsets are checked with one
fetch each and raised to the fetched high watermark. On Apache Kafka the two
agree and the check changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition

from driftloop_core.settings import KafkaSettings


async def true_end_offsets(
    kafka: KafkaSettings,
    reported: Mapping[TopicPartition, int],
    *,
    timeout_ms: int = 2000,
) -> dict[TopicPartition, int]:
    """The offset after the last record of each partition."""
    result = dict(reported)
    partitions = [tp for tp in reported]
    if not partitions:
        return result
    probe = AIOKafkaConsumer(
        **kafka.client_options(),
        enable_auto_commit=False,
        client_id=f"{kafka.client_id_prefix}-end-offsets",
    )
    await probe.start()
    try:
        probe.assign(partitions)
        for tp in partitions:
            probe.seek(tp, max(reported[tp] - 1, 0))
        await probe.getmany(*partitions, timeout_ms=timeout_ms, max_records=1)
        for tp in partitions:
            fetched = probe.highwater(tp)
            if fetched is not None and fetched > result[tp]:
                result[tp] = fetched
    finally:
        await probe.stop()
    return result


async def end_offsets(
    kafka: KafkaSettings, consumer: AIOKafkaConsumer, partitions: Iterable[TopicPartition]
) -> dict[TopicPartition, int]:
    """`consumer.end_offsets`, corrected with `true_end_offsets`."""
    reported = await consumer.end_offsets(list(partitions))
    return await true_end_offsets(kafka, reported)
