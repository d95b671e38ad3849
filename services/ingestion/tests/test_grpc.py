"""IngestService on a real gRPC server and the real broker: what a client sees, and
what lands on events.valid."""

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
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

pytestmark = pytest.mark.integration


def event(event_id: str | None, now_ms: int, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "customer_id": "c7",
        "ts": now_ms - 1000,
        "amount": 12.5,
        "channel": "web",
        "hour": 3,
    }
    if event_id is not None:
        body["event_id"] = event_id
    for key, value in changes.items():
        if value is ...:
            body.pop(key)
        else:
            body[key] = value
    return body


async def test_unary_ingest_publishes_and_answers_duplicates(
    service: IngestionService,
    settings: Settings,
    unique: str,
    now_ms: int,
    kafka_io: Any,
    spans: InMemorySpanExporter,
) -> None:
    async with insecure_channel(service.endpoint, settings) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        body = json.dumps(event(f"{unique}-1", now_ms, customer_id="c42", is_fraud=0))
        first = await stub.Ingest(ingest_pb2.IngestRequest(json=body))
        again = await stub.Ingest(ingest_pb2.IngestRequest(json=body))
        assigned = await stub.Ingest(
            ingest_pb2.IngestRequest(json=json.dumps(event(None, now_ms, customer_id=unique)))
        )
    assert (first.event_id, first.kind, first.duplicate) == (
        f"{unique}-1",
        ingest_pb2.EVENT_KIND_OBSERVATION,
        False,
    )
    assert again.duplicate and again.event_id == f"{unique}-1"
    assert len(assigned.event_id) == 32 and not assigned.duplicate

    [record] = await kafka_io.read_valid(f"{unique}-1", at_least=1)
    assert record.key == "c42"
    assert record.headers["ce_type"] == b"driftloop.event.observed.v1"
    assert record.headers["ce_id"] == f"{unique}-1".encode()
    assert record.headers["ce_source"] == b"/driftloop/test"
    # One trace from the gRPC call to the record: its traceparent names the
    # batch's send span, under the server span of the call.
    trace_id = record.headers["traceparent"].decode().split("-")[1]
    finished = [s for s in spans.get_finished_spans() if f"{s.context.trace_id:032x}" == trace_id]
    names = {s.name for s in finished}
    assert {"send events.valid", "ingest"} <= names
    assert any(s.kind == SpanKind.SERVER for s in finished)
    message = record.message
    assert isinstance(message, events_pb2.Observation)
    assert (message.event_id, message.entity_id, message.feature_set) == (
        f"{unique}-1",
        "c42",
        "payments",
    )
    assert message.event_time.ToMilliseconds() == now_ms - 1000
    assert message.values["amount"] == common_pb2.FeatureValue(float_value=12.5)
    assert message.values["channel"] == common_pb2.FeatureValue(string_value="web")
    assert message.values["hour"] == common_pb2.FeatureValue(int_value=3)
    assert message.HasField("label") and message.label == 0
    [with_assigned_id] = await kafka_io.read_valid(assigned.event_id, at_least=1, quiet_s=0)
    assert with_assigned_id.key == unique


MALFORMED = [
    ("bad json", '{"event_id": "x", ', "", "json"),
    ("missing field", {"hour": ...}, "hour", "required"),
    ("unknown field", {"colour": "red"}, "colour", "unknown_field"),
    ("wrong type", {"amount": "12.5"}, "amount", "type"),
    ("below min", {"amount": -3}, "amount", "min"),
    ("above max", {"hour": 24}, "hour", "max"),
    ("bad category", {"channel": "bike"}, "channel", "category"),
    ("bad timestamp", {"ts": "yesterday"}, "ts", "timestamp"),
    ("bad label value", {"is_fraud": 2}, "is_fraud", "label"),
]


async def test_each_rejection_is_invalid_argument_naming_field_and_rule(
    service: IngestionService, settings: Settings, unique: str, now_ms: int
) -> None:
    async with insecure_channel(service.endpoint, settings) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        for name, change, field, rule in MALFORMED:
            if isinstance(change, str):
                body = change
            else:
                body = json.dumps(event(f"{unique}-bad", now_ms, **change))
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Ingest(ingest_pb2.IngestRequest(json=body))
            error = caught.value
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, name
            details = error.details() or ""
            assert f"(rule: {rule})" in details, (name, details)
            if field:
                assert details.startswith(f"{field}: "), (name, details)
            trailing = dict(error.trailing_metadata() or ())
            assert trailing.get("driftloop-field") == field, name
            assert trailing.get("driftloop-rule") == rule, name


async def test_label_before_its_observation_is_held_then_flows_after_it(
    start_service: Any, settings: Settings, unique: str, now_ms: int, kafka_io: Any
) -> None:
    service = await start_service(consume=False, max_held_labels=1)
    label = json.dumps({"event_id": f"{unique}-1", "is_fraud": 1})
    async with insecure_channel(service.endpoint, settings) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        held = await stub.Ingest(ingest_pb2.IngestRequest(json=label))
        again = await stub.Ingest(ingest_pb2.IngestRequest(json=label))
        # One label already waits, the most this service allows.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            other = json.dumps({"event_id": f"{unique}-2", "is_fraud": 0})
            await stub.Ingest(ingest_pb2.IngestRequest(json=other))
        observed = await stub.Ingest(
            ingest_pb2.IngestRequest(
                json=json.dumps(event(f"{unique}-1", now_ms, customer_id="c5"))
            )
        )
        after = await stub.Ingest(ingest_pb2.IngestRequest(json=label))
    assert (held.kind, held.held, held.duplicate) == (ingest_pb2.EVENT_KIND_LABEL, True, False)
    assert (again.held, again.duplicate) == (True, True)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert dict(caught.value.trailing_metadata() or ())["driftloop-rule"] == "held_labels_full"
    assert (observed.kind, observed.held) == (ingest_pb2.EVENT_KIND_OBSERVATION, False)
    assert (after.held, after.duplicate) == (False, True)
    records = await kafka_io.read_valid(f"{unique}-", at_least=2)
    assert [type(r.message).__name__ for r in records] == ["Observation", "Label"]
    observation, late = records
    assert late.key == "c5" and late.message.entity_id == "c5" and late.message.label == 1
    assert late.partition == observation.partition and late.offset > observation.offset
    assert service.index.held_count() == 0


async def test_raw_event_form_is_judged_like_json(
    service: IngestionService, settings: Settings, unique: str, now_ms: int, kafka_io: Any
) -> None:
    def raw(**values: common_pb2.FeatureValue) -> ingest_pb2.IngestRequest:
        return ingest_pb2.IngestRequest(raw=ingest_pb2.RawEvent(fields=values))

    good = raw(
        event_id=common_pb2.FeatureValue(string_value=f"{unique}-raw"),
        customer_id=common_pb2.FeatureValue(int_value=99),
        ts=common_pb2.FeatureValue(int_value=now_ms),
        amount=common_pb2.FeatureValue(int_value=3),
        channel=common_pb2.FeatureValue(string_value="atm"),
        hour=common_pb2.FeatureValue(float_value=4.0),
    )
    async with insecure_channel(service.endpoint, settings) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        reply = await stub.Ingest(good)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Ingest(
                raw(
                    customer_id=common_pb2.FeatureValue(string_value="c1"),
                    ts=common_pb2.FeatureValue(int_value=now_ms),
                    amount=common_pb2.FeatureValue(float_value=float("nan")),
                    channel=common_pb2.FeatureValue(string_value="atm"),
                    hour=common_pb2.FeatureValue(),
                )
            )
        with pytest.raises(grpc.aio.AioRpcError) as empty:
            await stub.Ingest(ingest_pb2.IngestRequest())
    assert reply.event_id == f"{unique}-raw" and not reply.duplicate
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = caught.value.details() or ""
    assert (
        "amount: must be a finite number" in details and "hour: is required but got null" in details
    )
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "(rule: json)" in (empty.value.details() or "")
    [record] = await kafka_io.read_valid(f"{unique}-raw", at_least=1, quiet_s=0)
    assert record.key == "99"
    assert isinstance(record.message, events_pb2.Observation)
    assert record.message.values["amount"].float_value == 3.0
    assert record.message.values["hour"].int_value == 4


async def test_stream_counts_lists_rejections_and_publishes_the_valid(
    service: IngestionService, settings: Settings, unique: str, now_ms: int, kafka_io: Any
) -> None:
    bodies: list[str] = []
    for i in range(120):  # more than two server-side batches of 50
        bodies.append(json.dumps(event(f"{unique}-s{i}", now_ms, customer_id=f"c{i % 7}")))
    bodies[10] = json.dumps(event(f"{unique}-bad10", now_ms, amount=-1))
    bodies[60] = "not json"
    bodies.append(json.dumps({"event_id": f"{unique}-s3", "is_fraud": 1}))  # late label
    bodies.append(json.dumps({"event_id": f"{unique}-unseen", "is_fraud": 1}))
    bodies.append(bodies[0])  # a duplicate

    async def requests() -> AsyncIterator[ingest_pb2.IngestStreamRequest]:
        for body in bodies:
            yield ingest_pb2.IngestStreamRequest(json=body)

    async with insecure_channel(service.endpoint, settings) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        reply = await stub.IngestStream(requests())

    assert (reply.accepted, reply.rejected, reply.duplicates, reply.held) == (121, 2, 1, 1)
    assert [(r.index, r.event_id, r.field, r.rule) for r in reply.rejections] == [
        (10, f"{unique}-bad10", "amount", "min"),
        (60, "", "", "json"),
    ]
    assert reply.rejections[0].reason == "amount: must be >= 0, got -1"

    records = await kafka_io.read_valid(f"{unique}-s", at_least=119)
    observations = [r for r in records if isinstance(r.message, events_pb2.Observation)]
    labels = [r for r in records if isinstance(r.message, events_pb2.Label)]
    assert len(observations) == 118 and len(labels) == 1
    assert {r.message.event_id for r in observations} == {
        f"{unique}-s{i}" for i in range(120) if i not in (10, 60)
    }
    assert all(r.key == r.message.entity_id for r in observations)
    [late] = labels
    assert late.key == "c3" and late.message.entity_id == "c3" and late.message.label == 1
    assert late.headers["ce_id"] == f"{unique}-s3:label".encode()
    observed = next(r for r in observations if r.message.event_id == f"{unique}-s3")
    assert late.partition == observed.partition and late.offset > observed.offset


async def test_slow_stream_is_published_before_it_ends(
    service: IngestionService, settings: Settings, unique: str, now_ms: int, kafka_io: Any
) -> None:
    sent_first = asyncio.Event()
    finish = asyncio.Event()

    async def requests() -> AsyncIterator[ingest_pb2.IngestStreamRequest]:
        yield ingest_pb2.IngestStreamRequest(json=json.dumps(event(f"{unique}-slow", now_ms)))
        sent_first.set()
        await finish.wait()

    async with insecure_channel(service.endpoint, settings) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        call = asyncio.ensure_future(stub.IngestStream(requests()))
        await sent_first.wait()
        # The flush interval (50 ms here) publishes it while the stream stays open.
        [record] = await kafka_io.read_valid(f"{unique}-slow", at_least=1, quiet_s=0)
        assert not call.done()
        finish.set()
        reply = await call
    assert record.message.event_id == f"{unique}-slow"
    assert (reply.accepted, reply.rejected) == (1, 0)
