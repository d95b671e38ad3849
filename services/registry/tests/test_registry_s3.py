"""The registry with its artifacts on an S3-compatible server (moto), end to end.

The trainer's side puts the ONNX file on s3://, the registry reads it back from
there and verifies it before registering, and DownloadArtifact serves it, again
verified: a ModelTrained whose object was changed on the server is dead-lettered,
and a registered artifact changed afterwards is refused with DATA_LOSS.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
import s3fs
from driftloop.v1 import events_pb2, registry_pb2, registry_pb2_grpc
from driftloop_core.settings import Settings
from driftloop_registry.bootstrap import RegistryService
from driftloop_registry.config import RegistrySettings
from driftloop_testing import token_channel

pytestmark = pytest.mark.integration

READ_TOKEN = "s3cret-read-token"

Make = Callable[..., events_pb2.ModelTrained]
Send = Callable[[events_pb2.ModelTrained], Awaitable[None]]


@pytest.fixture
def server(s3_options: dict[str, str]) -> Any:
    """A client of its own on the S3 server, as another party would have."""
    return s3fs.S3FileSystem(skip_instance_cache=True, **s3_options)


@pytest.fixture
def bucket(server: Any, unique: str) -> str:
    name = f"models-{unique}"
    server.mkdir(name)
    return name


@pytest.fixture
def admin_settings(admin_settings: Settings, s3_options: dict[str, str], bucket: str) -> Settings:
    """The usual registry settings, with artifacts on S3 instead of DRIFTLOOP_HOME."""
    options = dict(s3_options)
    return admin_settings.model_copy(
        update={
            "artifacts_url": f"s3://{bucket}/driftloop/artifacts",
            "artifacts_endpoint_url": options.pop("endpoint_url"),
            "artifacts_options": options,
        }
    )


async def test_artifacts_on_s3_are_verified_registered_and_downloaded(
    service: RegistryService,
    admin_settings: Settings,
    config: RegistrySettings,
    server: Any,
    bucket: str,
    model_name: str,
    make_trained: Make,
    send_trained: Send,
    onnx_bytes: Callable[[float], bytes],
    read_events: Any,
    wait_for: Any,
) -> None:
    tampered = make_trained("run-tampered", 0.9, scale=7.0)
    assert tampered.artifact.uri.startswith(f"s3://{bucket}/driftloop/artifacts/sha256/")
    server.pipe_file(tampered.artifact.uri, b"swapped on the server")
    good = make_trained("run-good", 0.8, scale=2.0)
    original = onnx_bytes(2.0)
    assert server.cat_file(good.artifact.uri) == original

    await send_trained(tampered)
    await send_trained(good)

    letters = await read_events(
        admin_settings, config.deadletter_topic, model_name, events_pb2.DeadLetter, count=1
    )
    swapped = hashlib.sha256(b"swapped on the server").hexdigest()
    assert len(letters) == 1
    assert f"expected {tampered.artifact.sha256}, stored bytes have {swapped}" in (
        letters[0][1].reason
    )
    async with token_channel(service.endpoint, READ_TOKEN) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)

        async def registered() -> list[Any]:
            reply = await stub.ListVersions(registry_pb2.ListVersionsRequest(model=model_name))
            return list(reply.versions)

        listed = await wait_for(registered)
        assert [(v.version, v.request_id) for v in listed] == [(1, "run-good")]
        assert listed[0].artifact.uri == good.artifact.uri

        request = registry_pb2.DownloadArtifactRequest(
            model=model_name, alias="champion", chunk_size=256
        )
        chunks = [chunk async for chunk in stub.DownloadArtifact(request)]
        assert b"".join(chunk.data for chunk in chunks) == original
        assert {chunk.sha256 for chunk in chunks} == {hashlib.sha256(original).hexdigest()}

        # Changed on the server after registration: the download is refused.
        server.pipe_file(good.artifact.uri, original[:-1] + b"\x00")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            async for _ in stub.DownloadArtifact(request):
                pass
        assert refused.value.code() == grpc.StatusCode.DATA_LOSS
        assert "sha256 mismatch" in (refused.value.details() or "")
