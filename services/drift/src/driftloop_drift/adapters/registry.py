"""The champion's version and reference bins, from `RegistryService`.

Drift compares live feature values with the distributions the champion was
trained on, stored with the version in the registry. No champion (NOT_FOUND)
is an answer; a registry that cannot be reached is `RegistryUnavailable`, and
the service runs its performance detector meanwhile and asks again later.
"""

from __future__ import annotations

import grpc
import grpc.aio
from driftloop.v1 import registry_pb2, registry_pb2_grpc
from driftloop_core.grpc.client import open_channel
from driftloop_core.settings import Settings

from driftloop_drift.ports import ChampionReference, RegistryUnavailable


class RegistryReferences:
    """`ports.References` over the registry's gRPC API, one channel per lookup."""

    def __init__(self, settings: Settings, timeout_s: float) -> None:
        self._settings = settings
        self._target = settings.endpoints.registry
        self._timeout_s = timeout_s

    async def lookup(self, model: str, version: int | None = None) -> ChampionReference | None:
        """That version (the champion when None) with its reference; None when absent."""
        async with open_channel(self._target, self._settings) as channel:
            stub = registry_pb2_grpc.RegistryServiceStub(channel)
            try:
                if version is None:
                    champion: registry_pb2.GetChampionResponse = await stub.GetChampion(
                        registry_pb2.GetChampionRequest(model=model), timeout=self._timeout_s
                    )
                    found = champion.model_version
                else:
                    response: registry_pb2.GetVersionResponse = await stub.GetVersion(
                        registry_pb2.GetVersionRequest(model=model, version=version),
                        timeout=self._timeout_s,
                    )
                    found = response.model_version
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.NOT_FOUND:
                    return None
                raise RegistryUnavailable(
                    f"registry at {self._target}: {error.code().name}: {error.details()}"
                ) from None
        return ChampionReference(found.version, dict(found.reference))
