"""The champion as the trainer reads it over gRPC from a registry server running
in-process: downloaded and verified, or absent when the registry has none or is
down, or refused when its bytes do not match their digest."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import grpc
import grpc.aio
import pytest
from driftloop.v1 import common_pb2, registry_pb2, registry_pb2_grpc
from driftloop_core.broker import free_port
from driftloop_core.grpc.server import build_server
from driftloop_core.settings import Settings, load_settings
from driftloop_trainer.adapters.grpc_clients import RegistryChampions
from driftloop_trainer.ports import SourceError

pytestmark = pytest.mark.integration

ONNX = b"\x08\x07" + bytes(range(256)) * 40


class Registry(registry_pb2_grpc.RegistryServiceServicer):
    def __init__(self) -> None:
        self.champion: int | None = None
        self.digest = hashlib.sha256(ONNX).hexdigest()

    async def GetChampion(
        self, request: registry_pb2.GetChampionRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.GetChampionResponse:
        if self.champion is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"{request.model} has no champion")
        return registry_pb2.GetChampionResponse(
            model_version=registry_pb2.ModelVersion(
                model=request.model,
                version=self.champion or 0,
                artifact=common_pb2.Artifact(sha256=self.digest, size_bytes=len(ONNX)),
            )
        )

    async def DownloadArtifact(
        self, request: registry_pb2.DownloadArtifactRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[registry_pb2.DownloadArtifactResponse]:
        for offset in range(0, len(ONNX), 4096):
            yield registry_pb2.DownloadArtifactResponse(
                model=request.model,
                version=request.version,
                sha256=self.digest,
                size_bytes=len(ONNX),
                offset=offset,
                data=ONNX[offset : offset + 4096],
            )


def settings_for(registry: str) -> Settings:
    return load_settings(endpoints={"registry": registry})


async def test_champion_is_downloaded_verified_or_reported_absent() -> None:
    registry = Registry()
    server = build_server(
        load_settings(),
        [
            (
                registry_pb2_grpc.add_RegistryServiceServicer_to_server,
                registry,
                "driftloop.v1.RegistryService",
            )
        ],
        "127.0.0.1:0",
    )
    await server.start()
    try:
        champions = RegistryChampions(settings_for(server.endpoint))

        lookup = await champions.champion("payments")
        assert lookup.champion is None and lookup.note == "no champion"

        registry.champion = 4
        lookup = await champions.champion("payments")
        assert lookup.champion is not None
        assert lookup.champion.version == 4
        assert lookup.champion.onnx_bytes == ONNX

        registry.digest = "0" * 64
        with pytest.raises(SourceError, match="sha256"):
            await champions.champion("payments")
    finally:
        await server.stop(0)

    down = RegistryChampions(settings_for(f"127.0.0.1:{free_port()}"), timeout_s=5)
    lookup = await down.champion("payments")
    assert lookup.champion is None
    assert "unreachable" in lookup.note
