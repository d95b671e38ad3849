"""Labels before their observations, written by confluent-kafka (librdkafka, a client
no one here wrote) as a label producer would: no key, so labels land on other
partitions than their observations and overtake them. Nothing may be lost: every
label is held until its observation comes, then published once right after it,
across a restart too; only a label whose observation never comes is dead-lettered."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

import pytest
from driftloop.v1 import events_pb2
from driftloop_core.settings import Settings
from driftloop_ingestion.bootstrap import IngestionService
from driftloop_ingestion.config import IngestionSettings

pytestmark = pytest.mark.integration

EVENTS = 300


async def handled(service: IngestionService, count: int, timeout_s: float = 60) -> None:
    """Wait until the service's consumer has committed `count` records."""
    assert service.consumer is not None
    async with asyncio.timeout(timeout_s):
        await service.consumer.wait_handled(count)


def observation(event_id: str, n: int, now_ms: int) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "customer_id": f"c{n % 37}",
        "ts": now_ms - 60_000 + n,
        "amount": float(n),
        "channel": "web",
        "hour": n % 24,
    }


def label(event_id: str, n: int) -> tuple[None, dict[str, Any]]:
    return None, {"event_id": event_id, "is_fraud": n % 2}


def observations(ids: list[str], now_ms: int) -> list[tuple[str | None, dict[str, Any]]]:
    """Half keyed by entity, half with no key at all."""
    records: list[tuple[str | None, dict[str, Any]]] = []
    for n, event_id in enumerate(ids):
        body = observation(event_id, n, now_ms)
        records.append((body["customer_id"] if n % 2 else None, body))
    return records


async def assert_each_label_once_after_its_observation(
    kafka_io: Any, config: IngestionSettings, ids: list[str], prefix: str
) -> None:
    records = await kafka_io.read_valid(prefix, at_least=2 * len(ids), quiet_s=1.0)
    observed = {
        r.message.event_id: r for r in records if isinstance(r.message, events_pb2.Observation)
    }
    labels = [r for r in records if isinstance(r.message, events_pb2.Label)]
    assert sorted(observed) == sorted(ids)
    assert sorted(r.message.event_id for r in labels) == sorted(ids)  # each exactly once
    for record in labels:
        first = observed[record.message.event_id]
        n = ids.index(record.message.event_id)
        assert record.message.label == n % 2
        assert record.key == record.message.entity_id == first.message.entity_id
        assert record.partition == first.partition and record.offset > first.offset
    letters = await kafka_io.read_topic(config.deadletter_topic, lambda r: True, at_least=0)
    assert letters == []


async def test_unkeyed_labels_sent_before_their_observations_all_flow_none_lost(
    start_service: Any,
    settings: Settings,
    config: IngestionSettings,
    kafka_io: Any,
    unique: str,
    now_ms: int,
) -> None:
    ids = [f"{unique}-{n}" for n in range(EVENTS)]
    service = await start_service()
    await kafka_io.produce_json(config.source_topic, [label(i, n) for n, i in enumerate(ids)])
    await handled(service, EVENTS)
    assert service.index.held_count() == EVENTS
    await kafka_io.produce_json(config.source_topic, observations(ids, now_ms))
    await handled(service, 2 * EVENTS)
    await assert_each_label_once_after_its_observation(kafka_io, config, ids, f"{unique}-")
    assert service.index.held_count() == 0


async def test_held_labels_survive_a_restart(
    start_service: Any,
    settings: Settings,
    config: IngestionSettings,
    kafka_io: Any,
    unique: str,
    now_ms: int,
) -> None:
    ids = [f"{unique}-{n}" for n in range(50)]
    first = await start_service()
    await kafka_io.produce_json(config.source_topic, [label(i, n) for n, i in enumerate(ids)])
    await handled(first, len(ids))
    await first.stop()
    assert await kafka_io.read_valid(f"{unique}-", at_least=0) == []

    restarted = await start_service()
    assert restarted.index.held_count() == len(ids)
    await kafka_io.produce_json(config.source_topic, observations(ids, now_ms))
    await handled(restarted, len(ids))
    await assert_each_label_once_after_its_observation(kafka_io, config, ids, f"{unique}-")


async def test_a_label_whose_observation_never_comes_is_deadlettered_after_the_wait(
    start_service: Any,
    settings: Settings,
    config: IngestionSettings,
    kafka_io: Any,
    unique: str,
    now_ms: int,
) -> None:
    service = await start_service(
        label_wait=timedelta(seconds=2), label_expiry_interval=timedelta(milliseconds=200)
    )
    orphan, matched = f"{unique}-orphan", f"{unique}-matched"
    await kafka_io.produce_json(config.source_topic, [label(orphan, 1), label(matched, 0)])
    await kafka_io.produce_json(config.source_topic, observations([matched], now_ms))
    await handled(service, 3)

    [record] = await kafka_io.read_topic(config.deadletter_topic, lambda r: True, at_least=1)
    letter = events_pb2.DeadLetter.FromString(record.value)
    assert (letter.rule, letter.field, letter.event_id) == ("label_unmatched", "event_id", orphan)
    assert f"no observation '{orphan}' arrived within 2s" in letter.reason
    assert json.loads(letter.payload) == {"event_id": orphan, "is_fraud": 1}
    assert letter.source_topic == config.source_topic
    assert service.index.held_count() == 0
    # The label that found its observation in time flowed; the orphan did not.
    records = await kafka_io.read_valid(f"{unique}-", at_least=2)
    assert sorted((type(r.message).__name__, r.message.event_id) for r in records) == [
        ("Label", matched),
        ("Observation", matched),
    ]
