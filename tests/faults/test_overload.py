"""Overload: callers beyond the configured concurrency are refused at once, the
calls let in keep a bounded p99, and the server's memory stays flat.

A real inference process (`python -m driftloop_inference`, a real ONNX model of
a few milliseconds a call, no Kafka) is configured for 16 calls in flight
(`DRIFTLOOP_GRPC__MAX_CONCURRENT_RPCS`).
Callers then come in three waves of increasing size: as many as it takes (1x),
twice as many (2x), four times as many (4x). A refused caller retries after a
short pause, as a polite client would; an accepted one calls again at once.

Admission counts the calls the server has taken from gRPC's own queue. The
model here runs in the worker thread, so the event loop takes calls as fast as
they come and the cap sees them all. When the event loop itself is what
saturates (a model quick enough to run on it, on busy cores), calls wait in
gRPC core before the server takes them (grpc.aio takes one call per method at
a time), and only the caller's deadline bounds that wait; README, SRE guide.

What would fail without admission control: every call would be let in and
queue, so the 4x wave's p99 would be about four times the 1x wave's, memory
would grow with the queue, and nobody would hear RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import asyncio
import collections
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import numpy as np
import onnx
import pytest
from driftloop_core.broker import free_port
from inference import grpc_service_pb2 as oip
from inference import grpc_service_pb2_grpc as oip_grpc
from onnx import TensorProto, helper, numpy_helper

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

MODEL = "heavy"
CAPACITY = 16
WAVE_SECONDS = 4.0
RETRY_PAUSE_S = 0.1
# How much worse than the at-capacity wave an overloaded wave's accepted p99 may be.
# A server that queued the excess of the 4x wave would put its p99 near 4x; the
# other test worker sharing the two cores has pushed an honest 4x wave to 3.4x.
P50_FACTOR = 2.5
P99_FACTOR = 3.6
P99_SLACK_S = 0.025
# RSS growth allowed from the end of the 1x wave to the end of the 4x wave.
RSS_GROWTH_MAX_MB = 48.0


WIDTH = 64
HIDDEN = 2048


def _model(folder: Path) -> Path:
    """A model that costs a few milliseconds a row on one core (three wide dense
    layers): its runs go to the worker thread, and the server, not the test's
    client, is what saturates."""
    rng = np.random.default_rng(5)

    def weights(name: str, rows: int, columns: int) -> onnx.TensorProto:
        values = (rng.standard_normal((rows, columns)) / np.sqrt(rows)).astype(np.float32)
        return numpy_helper.from_array(values, name)

    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h1"]),
            helper.make_node("Relu", ["h1"], ["a1"]),
            helper.make_node("MatMul", ["a1", "w2"], ["h2"]),
            helper.make_node("Relu", ["h2"], ["a2"]),
            helper.make_node("MatMul", ["a2", "w3"], ["h3"]),
            helper.make_node("Relu", ["h3"], ["a3"]),
            helper.make_node("MatMul", ["a3", "w4"], ["y"]),
        ],
        "heavy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])],
        initializer=[
            weights("w1", WIDTH, HIDDEN),
            weights("w2", HIDDEN, HIDDEN),
            weights("w3", HIDDEN, HIDDEN),
            weights("w4", HIDDEN, 2),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = folder / "heavy.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def _request(seed: int) -> oip.ModelInferRequest:
    rng = np.random.default_rng(seed)
    request = oip.ModelInferRequest(model_name=MODEL)
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, WIDTH])
    tensor.contents.fp32_contents.extend(rng.standard_normal(WIDTH).tolist())
    return request


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


@dataclass
class Wave:
    callers: int
    accepted: list[float] = field(default_factory=list)
    refused: list[float] = field(default_factory=list)
    other: collections.Counter[str] = field(default_factory=collections.Counter)
    rss_mb: list[float] = field(default_factory=list)

    def p(self, values: list[float], q: float) -> float:
        return float(np.percentile(values, q)) if values else float("nan")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, int]]:
    port = free_port()
    endpoint = f"127.0.0.1:{port}"
    env = {
        **os.environ,
        "DRIFTLOOP_HOME": str(tmp_path / "home"),
        "DRIFTLOOP_ENDPOINTS__INFERENCE": endpoint,
        "DRIFTLOOP_METRICS_PORT": "0",
        "DRIFTLOOP_LOG_LEVEL": "WARNING",
        "DRIFTLOOP_GRPC__MAX_CONCURRENT_RPCS": str(CAPACITY),
        "DRIFTLOOP_INFERENCE_MODEL_FILE": str(_model(tmp_path)),
        "DRIFTLOOP_INFERENCE_MODEL_NAME": MODEL,
        "DRIFTLOOP_INFERENCE_EVENTS": "false",
        # One row a run: each call costs the server its own milliseconds.
        "DRIFTLOOP_INFERENCE_BATCHING": "false",
    }
    log_path = tmp_path / "inference.log"
    with log_path.open("wb") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "driftloop_inference"], env=env, stdout=log, stderr=log
        )
    try:
        with grpc.insecure_channel(endpoint) as channel:
            stub = oip_grpc.GRPCInferenceServiceStub(channel)
            deadline = time.monotonic() + 60
            while True:
                assert child.poll() is None, log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, log_path.read_text()[-3000:]
                try:
                    if stub.ServerReady(oip.ServerReadyRequest(), timeout=2).ready:
                        break
                except grpc.RpcError:
                    pass
                time.sleep(0.2)
        yield endpoint, child.pid
    finally:
        child.terminate()
        try:
            child.wait(20)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(10)


async def _wave(endpoint: str, pid: int, callers: int) -> Wave:
    wave = Wave(callers)
    requests = [_request(seed) for seed in range(64)]
    stop_at = time.monotonic() + WAVE_SECONDS
    # Several connections, as several client processes would open.
    channels = [
        grpc.aio.insecure_channel(endpoint, options=(("grpc.use_local_subchannel_pool", 1),))
        for _ in range(4)
    ]

    async def caller(index: int) -> None:
        stub = oip_grpc.GRPCInferenceServiceStub(channels[index % len(channels)])
        n = index
        while time.monotonic() < stop_at:
            n += 1
            started = time.perf_counter()
            try:
                reply: Any = await stub.ModelInfer(requests[n % len(requests)], timeout=5)
            except grpc.aio.AioRpcError as error:
                took = time.perf_counter() - started
                if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    wave.refused.append(took)
                    await asyncio.sleep(RETRY_PAUSE_S)
                else:
                    wave.other[f"{error.code().name}: {error.details()}"] += 1
                continue
            took = time.perf_counter() - started
            assert reply.model_version == "1" and reply.outputs
            wave.accepted.append(took)

    async def sample_memory() -> None:
        while time.monotonic() < stop_at:
            wave.rss_mb.append(_rss_mb(pid))
            await asyncio.sleep(0.25)

    try:
        await asyncio.gather(sample_memory(), *(caller(i) for i in range(callers)))
    finally:
        await asyncio.gather(*(channel.close() for channel in channels))
    return wave


async def test_overload_is_refused_at_once_and_accepted_calls_keep_a_bounded_p99(
    server: tuple[str, int], figures: Any
) -> None:
    endpoint, pid = server
    # Warm the model and the connections before measuring.
    await _wave(endpoint, pid, CAPACITY // 2)
    waves = [await _wave(endpoint, pid, CAPACITY * k) for k in (1, 2, 4)]
    base = waves[0]
    for wave in waves:
        figures.row(
            "Overload: inference configured for 16 calls in flight",
            callers=wave.callers,
            accepted_per_s=round(len(wave.accepted) / WAVE_SECONDS),
            accepted_p50_ms=wave.p(wave.accepted, 50) * 1000,
            accepted_p99_ms=wave.p(wave.accepted, 99) * 1000,
            refused=len(wave.refused),
            refused_p99_ms=wave.p(wave.refused, 99) * 1000,
            other_errors=sum(wave.other.values()),
            rss_mb=max(wave.rss_mb),
        )
    for wave in waves:
        assert not wave.other, f"{wave.callers} callers: {dict(wave.other)}"
        assert len(wave.accepted) > 100, f"{wave.callers} callers: too few calls answered"
    bound = P99_FACTOR * base.p(base.accepted, 99) + P99_SLACK_S
    for wave in waves[1:]:
        # The excess hears RESOURCE_EXHAUSTED, and sooner than an accepted call takes.
        assert len(wave.refused) > 0, f"{wave.callers} callers: nothing was refused"
        assert wave.p(wave.refused, 50) < wave.p(wave.accepted, 50), (
            f"{wave.callers} callers: refusals (p50 {wave.p(wave.refused, 50) * 1000:.1f} ms) "
            f"are not quicker than answers (p50 {wave.p(wave.accepted, 50) * 1000:.1f} ms)"
        )
        # Without admission control the waiting line, and so the median, would
        # grow with the callers: four times the callers, four times the median.
        p50, base_p50 = wave.p(wave.accepted, 50), base.p(base.accepted, 50)
        assert p50 <= P50_FACTOR * base_p50, (
            f"{wave.callers} callers: accepted p50 {p50 * 1000:.1f} ms beyond "
            f"{P50_FACTOR:g}x the at-capacity p50 ({base_p50 * 1000:.1f} ms)"
        )
        p99 = wave.p(wave.accepted, 99)
        assert p99 <= bound, (
            f"{wave.callers} callers: accepted p99 {p99 * 1000:.1f} ms beyond "
            f"{bound * 1000:.1f} ms ({P99_FACTOR:g}x the at-capacity p99 + slack)"
        )
    growth = max(waves[-1].rss_mb) - max(base.rss_mb)
    assert growth <= RSS_GROWTH_MAX_MB, f"RSS grew {growth:.1f} MB from 1x to 4x callers"
