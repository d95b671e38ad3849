"""The feature store and the registry, reached over gRPC, behind the run's interfaces.

A registry that is down or has no champion yet is not an error for training:
the run goes on and says there was no champion to compare with. A champion
whose bytes do not match their digest is an error: comparing against a
corrupted model would mislead the promotion gate. So is one larger than
`DRIFTLOOP_ARTIFACTS_MAX_BYTES` (announced or streamed), or a download whose
chunks do not follow each other: the download stops there, never holding more
than the limit.
"""

from __future__ import annotations

import grpc
import grpc.aio
from driftloop.v1 import (
    common_pb2,
    features_pb2,
    features_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)
from driftloop_core.artifacts import sha256_hex
from driftloop_core.grpc.client import open_channel
from driftloop_core.settings import Settings

from driftloop_trainer.ports import Champion, ChampionLookup, SourceError, TrainingSet

_UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class FeatureServiceTrainingSets:
    """Training sets from `FeatureService.GetTrainingSet`."""

    def __init__(self, settings: Settings, timeout_s: float = 300.0) -> None:
        self._settings = settings
        self._target = settings.endpoints.features
        self._timeout_s = timeout_s

    async def training_set(self, model: str, window: common_pb2.DataWindow) -> TrainingSet:
        async with open_channel(self._target, self._settings) as channel:
            stub = features_pb2_grpc.FeatureServiceStub(channel)
            try:
                response: features_pb2.GetTrainingSetResponse = await stub.GetTrainingSet(
                    features_pb2.GetTrainingSetRequest(model=model, window=window),
                    timeout=self._timeout_s,
                )
            except grpc.aio.AioRpcError as error:
                raise SourceError(
                    f"feature store at {self._target}: {error.code().name}: {error.details()}"
                ) from None
        return TrainingSet(response.dataset.uri, response.dataset)


class RegistryChampions:
    """The champion from `RegistryService.GetChampion` and `DownloadArtifact`."""

    def __init__(self, settings: Settings, timeout_s: float = 30.0) -> None:
        self._settings = settings
        self._target = settings.endpoints.registry
        self._timeout_s = timeout_s

    async def champion(self, model: str) -> ChampionLookup:
        async with open_channel(self._target, self._settings) as channel:
            stub = registry_pb2_grpc.RegistryServiceStub(channel)
            try:
                response: registry_pb2.GetChampionResponse = await stub.GetChampion(
                    registry_pb2.GetChampionRequest(model=model), timeout=self._timeout_s
                )
                version = response.model_version.version
                chunks: list[bytes] = []
                received = 0
                digest = ""
                limit = self._settings.artifacts_max_bytes
                stream = stub.DownloadArtifact(
                    registry_pb2.DownloadArtifactRequest(model=model, version=version),
                    timeout=self._timeout_s,
                )
                async for chunk in stream:
                    problem = ""
                    if chunk.offset != received:
                        problem = f"a chunk at offset {chunk.offset}, expected {received}"
                    elif max(chunk.size_bytes, received + len(chunk.data)) > limit:
                        problem = (
                            f"{max(chunk.size_bytes, received + len(chunk.data))} bytes, more "
                            f"than the {limit} allowed (DRIFTLOOP_ARTIFACTS_MAX_BYTES)"
                        )
                    if problem:
                        stream.cancel()
                        raise SourceError(f"champion v{version} artifact: {problem}")
                    digest = chunk.sha256 or digest
                    received += len(chunk.data)
                    chunks.append(chunk.data)
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.NOT_FOUND:
                    return ChampionLookup(None, "no champion")
                if error.code() in _UNREACHABLE:
                    return ChampionLookup(
                        None, f"no champion: registry unreachable ({error.code().name})"
                    )
                raise SourceError(
                    f"registry at {self._target}: {error.code().name}: {error.details()}"
                ) from None
        data = b"".join(chunks)
        if not digest or sha256_hex(data) != digest:
            raise SourceError(
                f"champion v{version} artifact does not match its sha256 {digest or '(none)'}"
            )
        return ChampionLookup(Champion(version, data))
