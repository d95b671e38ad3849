"""`DRIFTLOOP_INFERENCE_WORKERS=2`: two processes share the port with SO_REUSEPORT.

The service runs as `python -m driftloop_inference`, the way `driftloop up`
starts it. Connections from many clients land on both processes, every one
gets answers, and SIGTERM stops both.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from driftloop_core.broker import free_port
from grpc_health.v1 import health_pb2, health_pb2_grpc
from inference import grpc_service_pb2_grpc as oip_grpc
from models import payments_feeds, typed_infer_request

pytestmark = pytest.mark.integration

CONNECTIONS = 16


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()]


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def _established_on(port: int) -> set[str]:
    """Socket inodes of established TCP connections whose local port is `port`."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "01":
                inodes.add(fields[9])
    return inodes


async def _wait_serving(endpoint: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    async with grpc.aio.insecure_channel(endpoint) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = await health.Check(
                    health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService"),
                    timeout=2,
                )
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"inference at {endpoint} not serving in {timeout_s} s")
            await asyncio.sleep(0.2)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT and /proc")
async def test_two_workers_share_the_port_and_both_answer(
    tmp_path: Path, payments_v1: bytes
) -> None:
    model = tmp_path / "payments.onnx"
    model.write_bytes(payments_v1)
    port = free_port()
    env = {
        **os.environ,
        "DRIFTLOOP_HOME": str(tmp_path / "home"),
        "DRIFTLOOP_ENDPOINTS__INFERENCE": f"127.0.0.1:{port}",
        "DRIFTLOOP_INFERENCE_MODEL_FILE": str(model),
        "DRIFTLOOP_INFERENCE_MODEL_NAME": "payments",
        "DRIFTLOOP_INFERENCE_EVENTS": "false",
        "DRIFTLOOP_INFERENCE_WORKERS": "2",
    }
    log_path = tmp_path / "inference.log"
    process = _spawn(env, log_path)
    endpoint = f"127.0.0.1:{port}"
    try:
        await _wait_serving(endpoint, 60)
        workers = [process.pid, *_children(process.pid)]
        assert len(workers) == 2, f"expected 2 worker processes, found {workers}"
        # Both must have loaded the model before connections are spread over them.
        deadline = time.monotonic() + 60
        while _log(log_path).count('"model_swapped"') < 2:
            assert time.monotonic() < deadline, "the second worker did not load the model"
            await asyncio.sleep(0.2)

        feeds = payments_feeds(CONNECTIONS)
        requests = [
            typed_infer_request(
                "payments", {name: array[i : i + 1] for name, array in feeds.items()}
            )
            for i in range(CONNECTIONS)
        ]
        # One channel per client: separate TCP connections, spread by the kernel.
        channels = [
            grpc.aio.insecure_channel(endpoint, options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(CONNECTIONS)
        ]
        try:
            replies = await asyncio.gather(
                *(
                    oip_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=20)
                    for channel, request in zip(channels, requests, strict=True)
                )
            )
            established = _established_on(port)
            holders = [pid for pid in workers if _socket_inodes(pid) & established]
        finally:
            for channel in channels:
                await channel.close()
        assert all(reply.model_version == "1" for reply in replies)
        assert all(len(reply.outputs[1].contents.fp32_contents) == 2 for reply in replies)
        assert sorted(holders) == sorted(workers), (
            f"connections held by {holders}, workers {workers}"
        )
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.to_thread(process.wait, 30)
        finally:
            if process.poll() is None:
                process.kill()
    assert code == 0, _log(log_path)[-3000:]
    assert all(_stopped(pid) for pid in workers)


def _spawn(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "driftloop_inference"], env=env, stdout=log, stderr=log
        )


def _log(path: Path) -> str:
    return path.read_text()


def _stopped(pid: int) -> bool:
    """Gone, or a zombie waiting for its parent to collect it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
