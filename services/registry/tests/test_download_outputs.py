"""`driftloop models download -o ...` against a real registry (issue 20): a device,
a FIFO and `-` are written in place, a file only ever holds a verified model."""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from driftloop.v1 import events_pb2, registry_pb2, registry_pb2_grpc
from driftloop_registry.bootstrap import RegistryService
from driftloop_testing import token_channel
from support.devices import dev_null_restored, is_dev_null

pytestmark = pytest.mark.integration

READ_TOKEN = "s3cret-read-token"


async def driftloop(*args: str) -> tuple[int, bytes, str]:
    """The CLI as a user runs it; standard output raw, since `-o -` puts a model there."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTLOOP_")}
    env["DRIFTLOOP_READ_TOKEN"] = READ_TOKEN
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "driftloop_cli",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out, err.decode()


@pytest.fixture
async def model(
    service: RegistryService,
    model_name: str,
    make_trained: Callable[..., events_pb2.ModelTrained],
    send_trained: Callable[[events_pb2.ModelTrained], Awaitable[None]],
    onnx_bytes: Callable[[float], bytes],
    wait_for: Any,
) -> bytes:
    """Version 1 of the test's model, registered and champion; its ONNX bytes."""
    await send_trained(make_trained("run-1", 0.8, scale=3.0))
    async with token_channel(service.endpoint, READ_TOKEN) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)

        async def registered() -> bool:
            reply = await stub.ListVersions(registry_pb2.ListVersionsRequest(model=model_name))
            return len(reply.versions) == 1

        assert await wait_for(registered)
    return onnx_bytes(3.0)


def download(model_name: str, endpoint: str, output: str | Path) -> Awaitable[Any]:
    return driftloop(
        "models", "download", model_name, "champion", "-o", str(output), "--endpoint", endpoint
    )


class DamagingRegistry(registry_pb2_grpc.RegistryServiceServicer):
    """Relays DownloadArtifact from the real registry in 64-byte chunks and damages
    the transfer: `flip` inverts a byte of the first chunk (the digest no longer
    matches), `cut` ends the stream with UNAVAILABLE after the first chunk."""

    def __init__(self, upstream: str, damage: str) -> None:
        self._upstream = upstream
        self._damage = damage

    async def DownloadArtifact(
        self, request: registry_pb2.DownloadArtifactRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[registry_pb2.DownloadArtifactResponse]:
        request.chunk_size = 64
        async with token_channel(self._upstream, READ_TOKEN) as channel:
            stub = registry_pb2_grpc.RegistryServiceStub(channel)
            async for chunk in stub.DownloadArtifact(request):
                if self._damage == "flip" and chunk.offset == 0:
                    chunk.data = bytes([chunk.data[0] ^ 0xFF]) + chunk.data[1:]
                yield chunk
                if self._damage == "cut":
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "connection reset")


@pytest.fixture
async def damaging(
    service: RegistryService,
) -> AsyncIterator[Callable[[str], Awaitable[str]]]:
    """`await damaging("flip" | "cut")`: the address of a relay that damages downloads."""
    servers: list[grpc.aio.Server] = []

    async def start(damage: str) -> str:
        server = grpc.aio.server()
        registry_pb2_grpc.add_RegistryServiceServicer_to_server(
            DamagingRegistry(service.endpoint, damage), server
        )
        port = server.add_insecure_port("127.0.0.1:0")
        servers.append(server)
        await server.start()
        return f"127.0.0.1:{port}"

    try:
        yield start
    finally:
        await asyncio.gather(*(server.stop(None) for server in servers))


async def test_download_to_dev_null_keeps_the_device(
    service: RegistryService, model_name: str, model: bytes
) -> None:
    with dev_null_restored():
        code, out, err = await download(model_name, service.endpoint, "/dev/null")
        assert is_dev_null(), "/dev/null was replaced"
    assert code == 0, err
    assert f"{len(model)} bytes" in out.decode()
    assert not [name for name in os.listdir("/dev") if name.startswith("null.")]


async def test_download_into_a_fifo_read_by_another_process(
    service: RegistryService, model_name: str, model: bytes, tmp_path: Path
) -> None:
    fifo = tmp_path / "pipes" / "model.pipe"
    fifo.parent.mkdir()
    os.mkfifo(fifo)
    reader = await asyncio.create_subprocess_exec("cat", str(fifo), stdout=asyncio.subprocess.PIPE)
    (code, _, err), (received, _) = await asyncio.gather(
        download(model_name, service.endpoint, fifo), reader.communicate()
    )
    assert code == 0, err
    assert received == model
    assert hashlib.sha256(received).hexdigest() == hashlib.sha256(model).hexdigest()
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    assert os.listdir(fifo.parent) == ["model.pipe"]


async def test_download_to_standard_output(
    service: RegistryService, model_name: str, model: bytes
) -> None:
    code, out, err = await download(model_name, service.endpoint, "-")
    assert code == 0, err
    assert out == model
    assert hashlib.sha256(model).hexdigest() in err


async def test_download_to_a_file_replaces_it_only_with_a_verified_model(
    service: RegistryService,
    model_name: str,
    model: bytes,
    damaging: Callable[[str], Awaitable[str]],
    tmp_path: Path,
) -> None:
    target = tmp_path / "models" / "model.onnx"
    target.parent.mkdir()
    target.write_bytes(b"the previous model")
    fresh = tmp_path / "fresh" / "model.onnx"
    flip, cut = await damaging("flip"), await damaging("cut")

    corrupt, broken, corrupt_fresh = await asyncio.gather(
        download(model_name, flip, target),
        download(model_name, cut, target),
        download(model_name, flip, fresh),
    )
    code, _, err = corrupt
    assert code == 1
    assert "download corrupt" in err
    code, _, err = broken
    assert code == 1
    assert "UNAVAILABLE" in err
    assert target.read_bytes() == b"the previous model"
    assert os.listdir(target.parent) == ["model.onnx"]
    code, _, err = corrupt_fresh
    assert code == 1
    assert not fresh.exists()
    assert os.listdir(fresh.parent) == []

    code, _, err = await download(model_name, service.endpoint, target)
    assert code == 0, err
    assert target.read_bytes() == model
    assert os.listdir(target.parent) == ["model.onnx"]
