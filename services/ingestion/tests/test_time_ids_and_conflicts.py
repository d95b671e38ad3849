"""What ingestion refuses to trust, on every way in (a real server, the real broker,
and confluent-kafka writing `events.raw` as a user's producer would): event times
ahead of the wall clock, ids of megabytes, and an event id re-sent with other
content; and the one way a label may change, a correction."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import pytest
from driftloop.v1 import common_pb2, events_pb2, ingest_pb2, ingest_pb2_grpc
from driftloop_core.grpc.client import insecure_channel
from driftloop_core.settings import Settings
from driftloop_ingestion.bootstrap import IngestionService
from driftloop_ingestion.config import IngestionSettings

pytestmark = pytest.mark.integration


def body(event_id: str, now_ms: int, **changes: Any) -> dict[str, Any]:
    event = {
        "event_id": event_id,
        "customer_id": "c7",
        "ts": now_ms - 1000,
        "amount": 12.5,
        "channel": "web",
        "hour": 3,
        **changes,
    }
    return {key: value for key, value in event.items() if value is not ...}


def request(event: dict[str, Any]) -> ingest_pb2.IngestRequest:
    return ingest_pb2.IngestRequest(json=json.dumps(event))


async def refused(stub: ingest_pb2_grpc.IngestServiceAsyncStub, event: Any) -> grpc.aio.AioRpcError:
    """The error an `Ingest` of `event` (a JSON body or a request) fails with."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Ingest(event if isinstance(event, ingest_pb2.IngestRequest) else request(event))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return caught.value


def field_and_rule(error: grpc.aio.AioRpcError) -> tuple[str, str]:
    metadata = dict(error.trailing_metadata() or ())
    return str(metadata["driftloop-field"]), str(metadata["driftloop-rule"])


async def handled(service: IngestionService, count: int, timeout_s: float = 60) -> None:
    assert service.consumer is not None
    async with asyncio.timeout(timeout_s):
        await service.consumer.wait_handled(count)


async def letters_of(kafka_io: Any, config: IngestionSettings, count: int) -> list[Any]:
    records = await kafka_io.read_topic(config.deadletter_topic, lambda r: True, at_least=count)
    return [events_pb2.DeadLetter.FromString(record.value) for record in records]


@pytest.fixture
async def stub(
    start_service: Any, settings: Settings
) -> AsyncIterator[tuple[IngestionService, ingest_pb2_grpc.IngestServiceAsyncStub]]:
    """An ingestion that serves gRPC and reads `events.raw`, and a client of it."""
    service = await start_service()
    async with insecure_channel(service.endpoint, settings) as channel:
        yield service, ingest_pb2_grpc.IngestServiceStub(channel)


async def test_event_times_beyond_the_allowed_skew_are_refused(
    stub: Any, config: IngestionSettings, kafka_io: Any, unique: str, now_ms: int
) -> None:
    service, client = stub
    # The allowance is the feature set's grace (5 minutes) unless configured.
    assert service.ingestor.validator.max_future.total_seconds() == 300
    ahead = await refused(client, body(f"{unique}-ahead", now_ms, ts=now_ms + 3_600_000))
    assert field_and_rule(ahead) == ("ts", "future")
    details = ahead.details() or ""
    assert "ts: must not lie more than 5m after the current time" in details
    assert "DRIFTLOOP_INGESTION_MAX_FUTURE" in details and "(rule: future)" in details
    skewed = await client.Ingest(request(body(f"{unique}-skewed", now_ms, ts=now_ms + 60_000)))
    assert skewed.event_id == f"{unique}-skewed"

    # From Kafka: dead-lettered with the rule; the real event behind it flows.
    far = body(f"{unique}-far", now_ms, ts=now_ms + 365 * 86_400_000)
    await kafka_io.produce_json(config.source_topic, [(None, far), (None, body(unique, now_ms))])
    await handled(service, 2)
    [letter] = await letters_of(kafka_io, config, 1)
    assert (letter.field, letter.rule, letter.event_id) == ("ts", "future", f"{unique}-far")
    valid = await kafka_io.read_valid(f"{unique}", at_least=2)
    assert sorted(r.message.event_id for r in valid) == [unique, f"{unique}-skewed"]


async def test_ids_longer_than_256_bytes_are_refused_on_every_way_in(
    stub: Any, config: IngestionSettings, kafka_io: Any, unique: str, now_ms: int
) -> None:
    service, client = stub
    huge = "c" * 3 * 1024 * 1024
    typed = ingest_pb2.RawEvent()
    for name, value in (
        ("event_id", common_pb2.FeatureValue(string_value=f"{unique}-huge")),
        ("customer_id", common_pb2.FeatureValue(string_value=huge)),
        ("ts", common_pb2.FeatureValue(int_value=now_ms - 1000)),
        ("amount", common_pb2.FeatureValue(float_value=1.0)),
        ("channel", common_pb2.FeatureValue(string_value="web")),
        ("hour", common_pb2.FeatureValue(int_value=3)),
    ):
        typed.fields[name].CopyFrom(value)
    error = await refused(client, ingest_pb2.IngestRequest(raw=typed))
    assert field_and_rule(error) == ("customer_id", "length")
    details = error.details() or ""
    assert "customer_id: must be at most 256 bytes of UTF-8, got 3145728 bytes" in details
    assert len(details) < 1000, "the refusal does not echo the id"
    long_id = await refused(client, body("e" * 257, now_ms))
    assert field_and_rule(long_id) == ("event_id", "length")

    async def stream() -> AsyncIterator[ingest_pb2.IngestStreamRequest]:
        for event in (body("\u00e9" * 200, now_ms), body(f"{unique}-fine", now_ms)):
            yield ingest_pb2.IngestStreamRequest(json=json.dumps(event))

    reply = await client.IngestStream(stream())
    assert (reply.accepted, reply.rejected) == (1, 1)
    [rejection] = reply.rejections
    assert (rejection.index, rejection.field, rejection.rule) == (0, "event_id", "length")

    at_most = "k" * 256
    lines = [(None, body(f"{unique}-raw", now_ms, customer_id="k" * 257))]
    lines.append((None, body(f"{unique}-edge", now_ms, customer_id=at_most)))
    await kafka_io.produce_json(config.source_topic, lines)
    await handled(service, 2)
    [letter] = await letters_of(kafka_io, config, 1)
    assert (letter.field, letter.rule) == ("customer_id", "length")
    assert letter.event_id == f"{unique}-raw"
    valid = await kafka_io.read_valid(f"{unique}-", at_least=2)
    assert {r.message.event_id: r.key for r in valid} == {
        f"{unique}-fine": "c7",
        f"{unique}-edge": at_most,
    }


async def test_a_resent_id_with_other_content_is_a_conflict_and_labels_change_by_correction(
    stub: Any, config: IngestionSettings, kafka_io: Any, unique: str, now_ms: int
) -> None:
    service, client = stub
    e1 = f"{unique}-e1"
    first = body(e1, now_ms)
    assert not (await client.Ingest(request(first))).duplicate
    assert (await client.Ingest(request(first))).duplicate, "an identical re-send"
    changed = await refused(client, {**first, "amount": 99.0})
    assert field_and_rule(changed) == ("event_id", "conflict")
    assert f"'{e1}' was accepted before with other content" in (changed.details() or "")

    assert not (await client.Ingest(request({"event_id": e1, "is_fraud": 1}))).duplicate
    assert (await client.Ingest(request({"event_id": e1, "is_fraud": 1}))).duplicate
    relabelled = await refused(client, {"event_id": e1, "is_fraud": 0})
    assert field_and_rule(relabelled) == ("event_id", "conflict")
    assert f'{{"event_id": "{e1}", "is_fraud": 0, "correction": true}}' in (
        relabelled.details() or ""
    )
    corrected = await client.Ingest(request({"event_id": e1, "is_fraud": 0, "correction": True}))
    assert (corrected.kind, corrected.duplicate) == (ingest_pb2.EVENT_KIND_LABEL, False)

    # From Kafka alike: the conflicts are dead-lettered, the identical copies dropped.
    records: list[tuple[str | None, dict[str, Any]]] = [
        ("c7", first),
        ("c7", {**first, "customer_id": "c8"}),
        (None, {"event_id": e1, "is_fraud": 0}),  # the label now: a duplicate
        (None, {"event_id": e1, "is_fraud": 1}),  # the label before: a conflict now
    ]
    await kafka_io.produce_json(config.source_topic, records)
    await handled(service, len(records))
    # (Unkeyed records may land on the other partition: no order between the two.)
    letters = await letters_of(kafka_io, config, 2)
    assert [(x.field, x.rule, x.event_id) for x in letters] == [("event_id", "conflict", e1)] * 2
    by_payload = {json.loads(x.payload).get("customer_id", "label"): x.reason for x in letters}
    assert "customer_id 'c7' then, 'c8' now" in by_payload["c8"]
    assert f"observation '{e1}' is labelled 0 already" in by_payload["label"]

    # Downstream: the observation once, its label, then the correction that replaces it.
    valid = await kafka_io.read_valid(f"{unique}-", at_least=3)
    assert [type(r.message).__name__ for r in valid] == ["Observation", "Label", "Label"]
    label, correction = valid[1], valid[2]
    assert (label.message.label, label.headers["ce_id"]) == (1, f"{e1}:label".encode())
    assert "label_correction" not in label.headers
    assert correction.message.label == 0 and correction.headers["label_correction"] == b"1"
    assert correction.headers["ce_id"].decode().startswith(f"{e1}:correction:")
    assert correction.key == correction.message.entity_id == "c7"
    assert correction.partition == valid[0].partition and correction.offset > label.offset
