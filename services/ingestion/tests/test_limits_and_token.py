"""Who may ingest and how big an event may be: the ingest token on both gRPC
methods and `driftloop ingest`, and the raw event size limit on gRPC and on
`events.raw` (real server, real broker)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from driftloop.v1 import events_pb2, ingest_pb2, ingest_pb2_grpc
from driftloop_core.featureset import FeatureSet
from driftloop_core.grpc.client import insecure_channel
from driftloop_core.settings import Settings
from driftloop_ingestion.bootstrap import IngestionService, build
from driftloop_ingestion.config import IngestionSettings
from pydantic import SecretStr

pytestmark = pytest.mark.integration

TOKEN = "ingest-s3cret"


def event(event_id: str, now_ms: int, **changes: Any) -> str:
    body = {
        "event_id": event_id,
        "customer_id": "c7",
        "ts": now_ms - 1000,
        "amount": 12.5,
        "channel": "web",
        "hour": 3,
        **changes,
    }
    return json.dumps(body)


@pytest.fixture
async def guarded(
    settings: Settings, featureset: FeatureSet, config: IngestionSettings, topics: None
) -> AsyncIterator[IngestionService]:
    """A gRPC-only ingestion that requires the ingest token."""
    service = build(
        settings.model_copy(update={"ingest_token": SecretStr(TOKEN)}),
        featureset,
        config,
        grpc_address="127.0.0.1:0",
        consume=False,
    )
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


BAD_CREDENTIALS: list[tuple[tuple[str, str], ...]] = [
    (),
    (("authorization", "Bearer wrong"),),
    (("authorization", f"Bearer {TOKEN}x"),),
    (("authorization", TOKEN),),  # no scheme
    (("authorization", f"Basic {TOKEN}"),),
]


async def test_both_methods_require_the_ingest_token_when_set(
    guarded: IngestionService, settings: Settings, unique: str, now_ms: int, kafka_io: Any
) -> None:
    good = (("authorization", f"Bearer {TOKEN}"),)

    async def stream(*bodies: str) -> AsyncIterator[ingest_pb2.IngestStreamRequest]:
        for body in bodies:
            yield ingest_pb2.IngestStreamRequest(json=body)

    async with insecure_channel(guarded.endpoint, settings) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        for n, metadata in enumerate(BAD_CREDENTIALS):
            with pytest.raises(grpc.aio.AioRpcError) as unary:
                await stub.Ingest(
                    ingest_pb2.IngestRequest(json=event(f"{unique}-no{n}", now_ms)),
                    metadata=metadata,
                )
            with pytest.raises(grpc.aio.AioRpcError) as streamed:
                await stub.IngestStream(
                    stream(event(f"{unique}-nos{n}", now_ms)), metadata=metadata
                )
            for caught in (unary, streamed):
                assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED, metadata
                assert "Bearer <DRIFTLOOP_INGEST_TOKEN>" in (caught.value.details() or "")

        reply = await stub.Ingest(
            ingest_pb2.IngestRequest(json=event(f"{unique}-ok", now_ms)), metadata=good
        )
        assert reply.event_id == f"{unique}-ok" and not reply.duplicate
        streamed_reply = await stub.IngestStream(
            stream(event(f"{unique}-ok2", now_ms), event(f"{unique}-ok3", now_ms)),
            metadata=good,
        )
        assert (streamed_reply.accepted, streamed_reply.rejected) == (2, 0)

    # Only the three authorised events were published, none of the refused ones.
    records = await kafka_io.read_valid(f"{unique}-", at_least=3)
    assert sorted(r.message.event_id for r in records) == [
        f"{unique}-ok",
        f"{unique}-ok2",
        f"{unique}-ok3",
    ]


async def run_cli(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "driftloop_cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_the_cli_sends_the_ingest_token_from_the_environment(
    guarded: IngestionService, unique: str, now_ms: int, tmp_path: Path
) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text(event(f"{unique}-cli", now_ms) + "\n")
    base = {k: v for k, v in os.environ.items() if k != "DRIFTLOOP_INGEST_TOKEN"}
    args = ("ingest", str(events), "--endpoint", guarded.endpoint, "--json")

    code, _, err = await run_cli(*args, env=base)
    assert code == 1 and "UNAUTHENTICATED" in err
    code, _, err = await run_cli(*args, env={**base, "DRIFTLOOP_INGEST_TOKEN": "wrong"})
    assert code == 1 and "UNAUTHENTICATED" in err
    code, out, err = await run_cli(*args, env={**base, "DRIFTLOOP_INGEST_TOKEN": TOKEN})
    assert code == 0, err
    assert json.loads(out)["accepted"] == 1


async def test_an_open_ingestion_takes_calls_without_a_token(
    service: IngestionService, settings: Settings, unique: str, now_ms: int
) -> None:
    async with insecure_channel(service.endpoint, settings) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        reply = await stub.Ingest(ingest_pb2.IngestRequest(json=event(f"{unique}-open", now_ms)))
    assert reply.event_id == f"{unique}-open"


def padded(event_id: str, now_ms: int, size: int) -> str:
    """An otherwise valid event whose JSON text is exactly `size` bytes."""
    body = event(event_id, now_ms, pad="")
    return body.replace('"pad": ""', '"pad": "' + "x" * (size - len(body)) + '"')


async def test_events_over_the_size_limit_are_refused_naming_the_limit(
    start_service: Any,
    settings: Settings,
    config: IngestionSettings,
    kafka_io: Any,
    unique: str,
    now_ms: int,
) -> None:
    limit = 2048
    service = await start_service(max_event_bytes=limit)
    oversized = padded(f"{unique}-big", now_ms, limit + 1)
    assert len(oversized.encode()) == limit + 1
    # At the limit, the event is judged on its fields (`pad` is not one of them).
    at_limit = padded(f"{unique}-edge", now_ms, limit)

    async with insecure_channel(service.endpoint, settings) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Ingest(ingest_pb2.IngestRequest(json=oversized))
        with pytest.raises(grpc.aio.AioRpcError) as judged:
            await stub.Ingest(ingest_pb2.IngestRequest(json=at_limit))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = caught.value.details() or ""
    assert f"event is {limit + 1} bytes of JSON, more than the {limit} allowed" in details
    assert "DRIFTLOOP_INGESTION_MAX_EVENT_BYTES" in details and "(rule: size)" in details
    assert dict(caught.value.trailing_metadata() or ())["driftloop-rule"] == "size"
    assert dict(judged.value.trailing_metadata() or ())["driftloop-rule"] == "unknown_field"

    # On events.raw: dead-lettered with the rule, its payload cut to the limit,
    # and the partition moves on to the valid event behind it.
    huge = oversized.replace('"x', '"' + "x" * 100_000 + "x").encode()
    after = event(f"{unique}-after", now_ms).encode()
    await kafka_io.produce_lines(config.source_topic, [huge, after])
    [letter_record] = await kafka_io.read_topic(config.deadletter_topic, lambda r: True, at_least=1)
    letter = events_pb2.DeadLetter.FromString(letter_record.value)
    assert (letter.rule, letter.field) == ("size", "")
    assert f"event is {len(huge)} bytes of JSON" in letter.reason
    assert letter.payload == huge[:limit]
    [valid] = await kafka_io.read_valid(f"{unique}-after", at_least=1, quiet_s=0)
    assert valid.message.event_id == f"{unique}-after"
