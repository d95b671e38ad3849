"""The feature store's online lookup, over gRPC, within a deadline.

A lookup that fails (the store down, the deadline passed) raises
FeaturesUnavailable carrying the status code's name and details.
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc.aio
from driftloop.v1 import common_pb2, features_pb2, features_pb2_grpc
from driftloop_core.grpc.client import open_channel
from driftloop_core.settings import Settings
from google.protobuf.timestamp_pb2 import Timestamp

from driftloop_inference.errors import FeaturesUnavailable


class FeatureClient:
    def __init__(self, settings: Settings, target: str, timeout_s: float) -> None:
        self._settings = settings
        self._target = target
        self._timeout_s = timeout_s
        self._channel: grpc.aio.Channel | None = None
        self._stub: features_pb2_grpc.FeatureServiceAsyncStub | None = None

    @property
    def target(self) -> str:
        return self._target

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = self._stub = None

    async def online(
        self, entity_id: str, names: list[str], as_of: Timestamp | None, timeout_s: float | None
    ) -> Mapping[str, common_pb2.FeatureValue]:
        """The entity's present values (raises FeaturesUnavailable)."""
        if self._stub is None:
            self._channel = open_channel(self._target, self._settings)
            self._stub = features_pb2_grpc.FeatureServiceStub(self._channel)
        request = features_pb2.GetOnlineFeaturesRequest(entity_ids=[entity_id], feature_names=names)
        if as_of is not None:
            request.as_of.CopyFrom(as_of)
        timeout = self._timeout_s if timeout_s is None else min(timeout_s, self._timeout_s)
        try:
            reply: features_pb2.GetOnlineFeaturesResponse = await self._stub.GetOnlineFeatures(
                request, timeout=timeout
            )
        except grpc.aio.AioRpcError as error:
            raise FeaturesUnavailable(
                f"{error.code().name}: {error.details()}", code=error.code().name
            ) from error
        if not reply.entities:
            return {}
        values: Mapping[str, common_pb2.FeatureValue] = reply.entities[0].values
        return values
