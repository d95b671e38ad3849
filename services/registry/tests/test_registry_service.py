"""The registry end to end: real broker, real gRPC server in-process, real ONNX."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from driftloop.v1 import common_pb2, events_pb2, registry_pb2, registry_pb2_grpc
from driftloop_core.artifacts import ArtifactStore
from driftloop_core.grpc.client import insecure_channel
from driftloop_core.kafka import Topics
from driftloop_core.settings import Settings
from driftloop_registry.bootstrap import RegistryService
from driftloop_registry.config import RegistrySettings

pytestmark = pytest.mark.integration

TOKEN = "s3cret-admin-token"
ADMIN = (("authorization", f"Bearer {TOKEN}"),)
Make = Callable[..., events_pb2.ModelTrained]
Send = Callable[[events_pb2.ModelTrained], Awaitable[None]]


async def versions(stub: registry_pb2_grpc.RegistryServiceStub, model: str) -> list[Any]:
    reply = await stub.ListVersions(registry_pb2.ListVersionsRequest(model=model))
    return list(reply.versions)


async def test_gate_promotion_rollback_and_replay(
    service: RegistryService,
    admin_settings: Settings,
    model_name: str,
    make_trained: Make,
    send_trained: Send,
    read_events: Any,
    wait_for: Any,
) -> None:
    # A reader's channel: it sends the read token, and the admin token to promote.
    async with insecure_channel(service.endpoint, admin_settings) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)

        async def count(n: int) -> bool:
            return len(await versions(stub, model_name)) >= n

        # The first version becomes champion.
        first = make_trained("run-1", 0.80, scale=1.0)
        await send_trained(first)
        assert await wait_for(lambda: count(1))
        champion = await stub.GetChampion(registry_pb2.GetChampionRequest(model=model_name))
        assert champion.model_version.version == 1
        assert champion.model_version.aliases == ["champion"]

        # A worse challenger is registered as a candidate, with the reason.
        await send_trained(
            make_trained("run-2", 0.79, champion_auc=0.80, champion_version=1, scale=2.0)
        )
        assert await wait_for(lambda: count(2))
        v2 = await stub.GetVersion(registry_pb2.GetVersionRequest(model=model_name, version=2))
        assert v2.model_version.status == common_pb2.MODEL_VERSION_STATUS_CANDIDATE
        assert "not promoted" in v2.model_version.status_reason
        assert "0.7900" in v2.model_version.status_reason

        # A better one is promoted.
        await send_trained(
            make_trained("run-3", 0.86, champion_auc=0.80, champion_version=1, scale=3.0)
        )
        assert await wait_for(lambda: count(3))
        by_alias = await stub.GetVersion(
            registry_pb2.GetVersionRequest(model=model_name, alias="champion")
        )
        assert by_alias.model_version.version == 3
        assert by_alias.model_version.parent_version == 1
        assert by_alias.model_version.dataset.sha256 == "d" * 64

        # A replayed ModelTrained creates no second version.
        await send_trained(first)
        await send_trained(
            make_trained("run-4", 0.5, champion_auc=0.86, champion_version=3, scale=4.0)
        )
        assert await wait_for(lambda: count(4))
        listed = await versions(stub, model_name)
        assert [v.request_id for v in listed] == ["run-1", "run-2", "run-3", "run-4"]

        # Rollback restores the previous champion.
        rolled = await stub.Rollback(
            registry_pb2.RollbackRequest(
                model=model_name, reason="latency regression", actor="oncall"
            ),
            metadata=ADMIN,
        )
        assert rolled.model_version.version == 1
        assert rolled.promotion.kind == events_pb2.PROMOTION_KIND_ROLLBACK
        assert (rolled.promotion.from_version, rolled.promotion.to_version) == (3, 1)
        current = await stub.GetChampion(registry_pb2.GetChampionRequest(model=model_name))
        assert current.model_version.version == 1
        with pytest.raises(grpc.aio.AioRpcError) as none_left:
            await stub.Rollback(
                registry_pb2.RollbackRequest(model=model_name, reason="again"), metadata=ADMIN
            )
        assert none_left.value.code() == grpc.StatusCode.FAILED_PRECONDITION

        history = await stub.ListAliasHistory(
            registry_pb2.ListAliasHistoryRequest(model=model_name)
        )
        assert [(c.to_version, c.actor) for c in history.changes] == [
            (1, "registry"),
            (3, "registry"),
            # The actor is the credential; what the request says is a note.
            (1, "token:admin (oncall)"),
        ]

        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.GetVersion(registry_pb2.GetVersionRequest(model=model_name, version=7))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        assert missing.value.details() == f"model {model_name} has no version 7"

    registered = await read_events(
        admin_settings, Topics.MODELS_REGISTERED, model_name, events_pb2.ModelRegistered, count=4
    )
    assert [m.version for _, m in registered] == [1, 2, 3, 4]
    assert [m.status for _, m in registered] == [
        common_pb2.MODEL_VERSION_STATUS_CHAMPION,
        common_pb2.MODEL_VERSION_STATUS_CANDIDATE,
        common_pb2.MODEL_VERSION_STATUS_CHAMPION,
        common_pb2.MODEL_VERSION_STATUS_CANDIDATE,
    ]
    promoted = await read_events(
        admin_settings, Topics.MODELS_PROMOTED, model_name, events_pb2.ModelPromoted, count=3
    )
    assert [(m.kind, m.to_version) for _, m in promoted] == [
        (events_pb2.PROMOTION_KIND_PROMOTE, 1),
        (events_pb2.PROMOTION_KIND_PROMOTE, 3),
        (events_pb2.PROMOTION_KIND_ROLLBACK, 1),
    ]
    assert not promoted[0][1].HasField("from_version")
    for headers, message in promoted:
        assert headers["ce_id"].decode() == message.promotion_id
        assert headers["ce_type"] == b"driftloop.model.promoted.v1"


async def test_corrupt_artifact_is_dead_lettered_not_registered(
    service: RegistryService,
    admin_settings: Settings,
    config: RegistrySettings,
    artifacts: ArtifactStore,
    model_name: str,
    make_trained: Make,
    send_trained: Send,
    read_events: Any,
) -> None:
    corrupt = make_trained("run-bad", 0.9, scale=9.0)
    path = artifacts.local_path(corrupt.artifact)
    assert path is not None
    path.write_bytes(b"not the bytes that were digested")
    await send_trained(corrupt)
    letters = await read_events(
        admin_settings, config.deadletter_topic, model_name, events_pb2.DeadLetter, count=1
    )
    assert len(letters) == 1
    letter = letters[0][1]
    assert "sha256 mismatch" in letter.reason
    assert letter.source_topic == config.source_topic
    async with insecure_channel(service.endpoint, admin_settings) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        assert await versions(stub, model_name) == []


async def test_promote_requires_the_token_and_download_verifies(
    service: RegistryService,
    admin_settings: Settings,
    model_name: str,
    make_trained: Make,
    send_trained: Send,
    onnx_bytes: Callable[[float], bytes],
    wait_for: Any,
    tmp_path: Path,
) -> None:
    await send_trained(make_trained("run-1", 0.8, scale=1.0))
    await send_trained(make_trained("run-2", 0.7, champion_auc=0.8, champion_version=1, scale=5.0))
    async with (
        grpc.aio.insecure_channel(service.endpoint) as bare,
        insecure_channel(service.endpoint, admin_settings) as channel,
    ):
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        stranger = registry_pb2_grpc.RegistryServiceStub(bare)

        async def two() -> bool:
            return len(await versions(stub, model_name)) == 2

        assert await wait_for(two)
        request = registry_pb2.PromoteRequest(model=model_name, version=2, reason="manual")
        for metadata in ((), (("authorization", "Bearer wrong"),), (("authorization", TOKEN),)):
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await stranger.Promote(request, metadata=metadata)
            assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # Reads are not open either.
        with pytest.raises(grpc.aio.AioRpcError) as unread:
            await stranger.GetChampion(registry_pb2.GetChampionRequest(model=model_name))
        assert unread.value.code() == grpc.StatusCode.UNAUTHENTICATED
        champion = await stub.GetChampion(registry_pb2.GetChampionRequest(model=model_name))
        assert champion.model_version.version == 1

        promoted = await stub.Promote(request, metadata=ADMIN)
        assert promoted.model_version.version == 2
        assert promoted.promotion.from_version == 1

        chunks = [
            chunk
            async for chunk in stub.DownloadArtifact(
                registry_pb2.DownloadArtifactRequest(
                    model=model_name, alias="champion", chunk_size=100
                )
            )
        ]
        data = b"".join(chunk.data for chunk in chunks)
        original = onnx_bytes(5.0)
        assert data == original
        # 100 bytes is below the minimum chunk: raised to it, this small model
        # comes in one message (test_download_limits.py streams a larger one).
        assert len(chunks) == 1
        assert {c.sha256 for c in chunks} == {hashlib.sha256(original).hexdigest()}
        assert {c.size_bytes for c in chunks} == {len(original)}
        assert [c.offset for c in chunks] == [0]
