"""A FeatureService of the test's own: fixed online values, each lookup recorded."""

from __future__ import annotations

from typing import Any

import grpc
from driftloop.v1 import common_pb2, features_pb2, features_pb2_grpc


class OnlineFeatures(features_pb2_grpc.FeatureServiceServicer):
    """A FeatureService with fixed online values, recording each lookup."""

    def __init__(self, values: dict[str, dict[str, common_pb2.FeatureValue]]) -> None:
        self.values = values
        self.requests: list[features_pb2.GetOnlineFeaturesRequest] = []

    async def GetOnlineFeatures(self, request: Any, context: Any) -> Any:
        self.requests.append(request)
        response = features_pb2.GetOnlineFeaturesResponse()
        for entity in request.entity_ids:
            entry = response.entities.add(entity_id=entity)
            for name, value in self.values.get(entity, {}).items():
                entry.values[name].CopyFrom(value)
        return response


def fv(value: float | str) -> common_pb2.FeatureValue:
    if isinstance(value, str):
        return common_pb2.FeatureValue(string_value=value)
    return common_pb2.FeatureValue(float_value=value)


async def start_features_server(servicer: OnlineFeatures) -> tuple[grpc.aio.Server, str]:
    """`servicer` on a free local port, started; the server and its address."""
    server = grpc.aio.server()
    features_pb2_grpc.add_FeatureServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"
