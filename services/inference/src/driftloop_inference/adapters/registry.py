"""The registry over gRPC: the champion's version and an artifact's verified bytes.

The champion is what a promotion is checked against (`lifecycle`): the registry
decides it, not whoever wrote to `models.promoted`. A download stops as soon as
the registry announces, or streams, more bytes than
`DRIFTLOOP_ARTIFACTS_MAX_BYTES`, or a chunk that does not continue where the
last one ended: an oversized or garbled artifact is refused without being held
in memory, and the loaded model keeps serving.
"""

from __future__ import annotations

import hashlib

import grpc
import grpc.aio
from driftloop.v1 import registry_pb2, registry_pb2_grpc
from driftloop_core.grpc.client import open_channel
from driftloop_core.settings import Settings

from driftloop_inference.errors import RegistryUnavailable
from driftloop_inference.model import ModelLoadError


class RegistryClient:
    def __init__(self, settings: Settings, target: str, timeout_s: float) -> None:
        self._settings = settings
        self._target = target
        self._timeout_s = timeout_s
        self._channel: grpc.aio.Channel | None = None

    def _stub(self) -> registry_pb2_grpc.RegistryServiceAsyncStub:
        if self._channel is None:
            self._channel = open_channel(self._target, self._settings)
        return registry_pb2_grpc.RegistryServiceStub(self._channel)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def champion(self, model: str) -> registry_pb2.ModelVersion | None:
        """The champion version, None when the model has none; raises RegistryUnavailable."""
        try:
            reply = await self._stub().GetChampion(
                registry_pb2.GetChampionRequest(model=model), timeout=self._timeout_s
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise RegistryUnavailable(error.code().name, error.details() or "") from error
        version: registry_pb2.ModelVersion = reply.model_version
        return version

    async def download(self, model: str, version: int) -> tuple[bytes, str]:
        """The artifact's bytes and the digest the registry vouches for; raises
        ModelLoadError when the download fails, is too large, or the bytes do not
        match the digest."""
        limit = self._settings.artifacts_max_bytes
        chunks: list[bytes] = []
        received = 0
        digest = ""
        size = -1
        try:
            stream = self._stub().DownloadArtifact(
                registry_pb2.DownloadArtifactRequest(model=model, version=version),
                timeout=self._timeout_s,
            )
            async for chunk in stream:
                if chunk.offset != received:
                    stream.cancel()
                    raise ModelLoadError(
                        "download",
                        f"model {model} v{version}: a chunk at offset {chunk.offset}, "
                        f"expected {received}",
                    )
                digest = chunk.sha256 or digest
                size = chunk.size_bytes
                received += len(chunk.data)
                if max(size, received) > limit:
                    stream.cancel()
                    raise ModelLoadError(
                        "size",
                        f"model {model} v{version}: the artifact is "
                        f"{max(size, received)} bytes, more than the {limit} allowed "
                        "(DRIFTLOOP_ARTIFACTS_MAX_BYTES)",
                    )
                chunks.append(chunk.data)
        except grpc.aio.AioRpcError as error:
            raise ModelLoadError(
                "download",
                f"model {model} v{version}: download from the registry at {self._target} "
                f"failed: {error.code().name}: {error.details()}",
            ) from None
        data = b"".join(chunks)
        actual = hashlib.sha256(data).hexdigest()
        if not digest or actual != digest or (size >= 0 and len(data) != size):
            raise ModelLoadError(
                "digest",
                f"model {model} v{version}: downloaded {len(data)} bytes with sha256 {actual}, "
                f"the registry announced {size} bytes with sha256 {digest or '(none)'}",
            )
        return data, digest
