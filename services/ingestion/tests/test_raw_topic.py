"""JSON lines on the raw topic, as `kcat` would write them, through a real ingestion
consumer on the real broker: dead letters, valid events, late labels, replays
and a restart."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from driftloop.v1 import events_pb2
from driftloop_ingestion.bootstrap import IngestionService
from driftloop_ingestion.config import IngestionSettings
from driftloop_ingestion.validation import origin_event_id

pytestmark = pytest.mark.integration


async def consumed(service: IngestionService, count: int, timeout_s: float = 30) -> None:
    """Wait until the service's consumer has committed `count` records."""
    consumer = service.consumer
    assert consumer is not None
    async with asyncio.timeout(timeout_s):
        await consumer.wait_handled(count)


def line(body: dict[str, Any] | str) -> bytes:
    return (body if isinstance(body, str) else json.dumps(body)).encode()


async def test_raw_events_flow_bad_ones_are_deadlettered_and_replays_change_nothing(
    start_service: Any, config: IngestionSettings, kafka_io: Any, unique: str, now_ms: int
) -> None:
    def obs(n: int, **changes: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "event_id": f"{unique}-{n}",
            "customer_id": f"c{n}",
            "ts": now_ms - 10_000 + n,
            "amount": 10.0 + n,
            "channel": "pos",
            "hour": n % 24,
        }
        body.update(changes)
        return {k: v for k, v in body.items() if v is not ...}

    good = [obs(1), obs(2, is_fraud=1), obs(3)]
    late_label = {"event_id": f"{unique}-1", "is_fraud": 1}
    no_id = obs(4, event_id=..., customer_id=f"{unique}-anon")
    bad = [
        ("{not json", "", "json", "event is not valid JSON"),
        (obs(10, hour=...), "hour", "required", "hour: is required but missing"),
        (obs(11, colour="red"), "colour", "unknown_field", "colour: is not a field"),
        (obs(12, amount="lots"), "amount", "type", "amount: must be a number, got 'lots'"),
        (obs(13, amount=-3), "amount", "min", "amount: must be >= 0, got -3"),
        (obs(14, hour=30), "hour", "max", "hour: must be <= 23, got 30"),
        (obs(15, channel="bike"), "channel", "category", "channel: must be one of web, pos"),
        (obs(16, ts="soon"), "ts", "timestamp", "ts: must be RFC 3339"),
        (
            {"event_id": f"{unique}-nobody", "is_fraud": 1},
            "event_id",
            "held_labels_full",
            f"event_id: no observation '{unique}-nobody' has arrived yet",
        ),
        (obs(17, is_fraud=5), "is_fraud", "label", "is_fraud: must be 0 or 1, got 5"),
    ]
    # Bad records sit between good ones; the label comes after its observation.
    lines = [line(good[0]), *(line(b[0]) for b in bad[:5]), line(good[1])]
    lines += [*(line(b[0]) for b in bad[5:]), line(good[2]), line(late_label), line(no_id)]
    positions = await kafka_io.produce_lines(config.source_topic, lines)

    # No label may wait for its observation here (that is test_labels_any_order's).
    service = await start_service(max_held_labels=0)
    await consumed(service, len(lines))

    # Every bad record is dead-lettered once, with reason, rule, payload and origin.
    letters = [
        events_pb2.DeadLetter.FromString(record.value)
        for record in await kafka_io.read_topic(
            config.deadletter_topic, lambda r: True, at_least=len(bad)
        )
    ]
    assert len(letters) == len(bad)
    by_payload = {letter.payload: letter for letter in letters}
    for body, field, rule, reason in bad:
        letter = by_payload[line(body)]
        assert (letter.field, letter.rule) == (field, rule)
        assert reason in letter.reason
        partition, offset, _ = positions[lines.index(line(body))]
        assert (letter.source_topic, letter.source_partition, letter.source_offset) == (
            config.source_topic,
            partition,
            offset,
        )
        assert letter.service == "test"
        assert letter.event_id == (body.get("event_id", "") if isinstance(body, dict) else "")

    # The good ones flow, keyed by entity; the late label by its observation's entity.
    records = await kafka_io.read_valid(f"{unique}-", at_least=4)
    observations = {
        r.message.event_id: r for r in records if isinstance(r.message, events_pb2.Observation)
    }
    labels = [r for r in records if isinstance(r.message, events_pb2.Label)]
    assert set(observations) == {f"{unique}-1", f"{unique}-2", f"{unique}-3"}
    for n in (1, 2, 3):
        record = observations[f"{unique}-{n}"]
        message = record.message
        assert record.key == f"c{n}" == message.entity_id
        assert message.event_time.ToMilliseconds() == now_ms - 10_000 + n
        assert message.values["amount"].float_value == 10.0 + n
        assert message.values["channel"].string_value == "pos"
        assert message.values["hour"].int_value == n
        assert message.HasField("label") == (n == 2)
    [label] = labels
    assert label.key == "c1" and label.message.entity_id == "c1" and label.message.label == 1
    assert label.message.event_time.ToMilliseconds() == now_ms - 10_000 + 1

    # The event without an id got one derived from its position on the topic.
    partition, offset, timestamp = positions[-1]
    anon_id = origin_event_id((config.source_topic, partition, offset, timestamp))
    [anon] = await kafka_io.read_valid(anon_id, at_least=1, quiet_s=0)
    assert anon.key == f"{unique}-anon"

    # A producer replaying the same events (same ids) publishes nothing new.
    replay = [line(good[0]), line(good[1]), line(good[2]), line(late_label)]
    await kafka_io.produce_lines(config.source_topic, replay)
    await consumed(service, len(lines) + len(replay))
    assert len(await kafka_io.read_valid(f"{unique}-", at_least=4, quiet_s=1.0)) == 4

    # A new instance on the same home (a restart) reading the whole topic again
    # under a new group: every id is remembered, so again nothing new, and the
    # record without an id gets the same id as the first time.
    await service.stop()
    restarted = await start_service(group_id=f"{config.group_id}.again", max_held_labels=0)
    await consumed(restarted, len(lines) + len(replay))
    assert len(await kafka_io.read_valid(f"{unique}-", at_least=4, quiet_s=1.0)) == 4
    assert len(await kafka_io.read_valid(anon_id, at_least=1, quiet_s=0.5)) == 1
    # Bad records are dead-lettered again on a replay: at-least-once, never lost.
    again = await kafka_io.read_topic(
        config.deadletter_topic, lambda r: True, at_least=2 * len(bad)
    )
    assert len(again) == 2 * len(bad)
