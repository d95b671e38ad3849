"""Inference isolation: do one-row ModelInfer calls still answer promptly while
max-size requests run beside them?

    .venv/bin/python loadtests/inference_isolation.py [--seconds 5] [--rows 4096]
        [--large-loops 2] [--large-format raw|typed] [--json-out FILE]

Starts `python -m driftloop_inference` as its own process (one worker, no Kafka)
serving the benchmark's payments model (inference_benchmark.py's rows and
histogram gradient boosting, the trainer's pipeline and ONNX export), then
measures one-row ModelInfer calls, one in flight at a time:

* alone;
* while `--large-loops` client loops, in another process, each keep one
  `--rows`-row request in flight (by default the largest the service admits,
  `DRIFTLOOP_INFERENCE_MAX_REQUEST_ROWS`, sent raw as tritonclient sends it).

Prints p50, p99 and the longest of the one-row calls in each phase, the ratio
of p50 and p99 to the figures alone, and what the large requests achieved
(refusals included: `--rows 1000000` measures what refusing them costs). A
benchmark, not a test: it asserts nothing about speed. The environment passes
through to the server (`DRIFTLOOP_INFERENCE_*` to tune it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import numpy as np
from driftloop_core.broker import free_port
from inference import grpc_service_pb2 as oip
from inference import grpc_service_pb2_grpc as oip_grpc

MODEL = "payments"
FEATURES = ("amount", "channel", "hour", "amount_mean_1h", "txn_count_10m")
PROBES = 1_000
CALL_TIMEOUT_S = 30.0
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


def _identity(data: bytes) -> bytes:
    return data


def fit_model() -> tuple[bytes, dict[str, Any]]:
    """The benchmark's model and rows (imported late: its imports take seconds)."""
    from driftloop_core.featureset import default_featureset_path, load_featureset
    from inference_benchmark import fit_driftloop_model, make_rows

    rows = make_rows()
    _, onnx_bytes = fit_driftloop_model(rows, load_featureset(default_featureset_path()))
    return onnx_bytes, rows


def infer_request(rows: dict[str, Any], start: int, count: int, raw: bool) -> bytes:
    """A ModelInfer of rows [start, start + count) (repeated past the last row):
    one [count, 1] tensor per feature."""
    request = oip.ModelInferRequest(model_name=MODEL)
    taken = np.arange(start, start + count) % len(rows["amount"])
    for name in FEATURES:
        values = rows[name][taken]
        datatype = "BYTES" if name == "channel" else "FP32"
        tensor = request.inputs.add(name=name, datatype=datatype, shape=[count, 1])
        if datatype == "BYTES":
            items = [str(value).encode() for value in values]
            if raw:
                request.raw_input_contents.append(
                    b"".join(len(item).to_bytes(4, "little") + item for item in items)
                )
            else:
                tensor.contents.bytes_contents.extend(items)
        elif raw:
            request.raw_input_contents.append(np.ascontiguousarray(values, "<f4").tobytes())
        else:
            tensor.contents.fp32_contents.extend(float(value) for value in values)
    return request.SerializeToString()


@dataclass
class Phase:
    name: str
    calls: int = 0
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    # The longest call: a stall of the whole server shows here, rare as it is.
    max_ms: float = float("nan")
    errors: dict[str, int] = field(default_factory=dict)
    # The large requests' own figures (the phase beside them only).
    large_calls: int = 0
    large_per_s: float = 0.0
    large_p50_ms: float = float("nan")
    large_errors: dict[str, int] = field(default_factory=dict)


async def _probe(
    endpoint: str, payloads: list[bytes], seconds: float
) -> tuple[list[float], dict[str, int]]:
    """One-row calls, one in flight at a time, for `seconds`: latencies and errors."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    async with grpc.aio.insecure_channel(endpoint) as channel:
        call = channel.unary_unary(
            MODEL_INFER, request_serializer=_identity, response_deserializer=_identity
        )
        stop = time.monotonic() + seconds
        n = 0
        while time.monotonic() < stop:
            started = time.perf_counter()
            try:
                await call(payloads[n % len(payloads)], timeout=CALL_TIMEOUT_S)
            except grpc.aio.AioRpcError as error:
                errors[error.code().name] = errors.get(error.code().name, 0) + 1
            else:
                latencies.append(time.perf_counter() - started)
            n += 1
    return latencies, errors


def _large_load(
    endpoint: str, payload: bytes, loops: int, running: Event, stop: Event, out: Any
) -> None:
    """Child process: `loops` loops each keeping one large request in flight."""

    async def run() -> dict[str, Any]:
        latencies: list[float] = []
        errors: dict[str, int] = {}
        # One connection per loop, as separate clients would have.
        channels = [
            grpc.aio.insecure_channel(endpoint, options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(loops)
        ]

        async def loop(channel: grpc.aio.Channel) -> None:
            call = channel.unary_unary(
                MODEL_INFER, request_serializer=_identity, response_deserializer=_identity
            )
            while not stop.is_set():
                started = time.perf_counter()
                try:
                    await call(payload, timeout=CALL_TIMEOUT_S)
                except grpc.aio.AioRpcError as error:
                    # Refused requests count too: a refusal has its cost.
                    errors[error.code().name] = errors.get(error.code().name, 0) + 1
                else:
                    latencies.append(time.perf_counter() - started)

        running.set()
        began = time.monotonic()
        try:
            await asyncio.gather(*(loop(channel) for channel in channels))
        finally:
            await asyncio.gather(*(channel.close() for channel in channels))
        return {"latencies": latencies, "errors": errors, "seconds": time.monotonic() - began}

    out.put(asyncio.run(run()))


def _percentile_ms(values: list[float], q: float) -> float:
    return float(np.percentile(values, q) * 1000) if values else float("nan")


async def wait_ready(endpoint: str, server: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    async with grpc.aio.insecure_channel(endpoint) as channel:
        stub = oip_grpc.GRPCInferenceServiceStub(channel)
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise RuntimeError(f"the inference server exited ({server.returncode})")
            try:
                if (await stub.ModelReady(oip.ModelReadyRequest(name=MODEL), timeout=2)).ready:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.3)
    raise RuntimeError(f"the inference server was not ready in {timeout_s:.0f} s")


def start_server(home: Path, model: Path, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DRIFTLOOP_HOME": str(home),
        "DRIFTLOOP_LOG_LEVEL": "WARNING",
        "DRIFTLOOP_ENDPOINTS__INFERENCE": f"127.0.0.1:{port}",
        "DRIFTLOOP_INFERENCE_MODEL_FILE": str(model),
        "DRIFTLOOP_INFERENCE_MODEL_NAME": MODEL,
        "DRIFTLOOP_INFERENCE_EVENTS": "false",
        "DRIFTLOOP_INFERENCE_WORKERS": "1",
    }
    log = (home / "inference.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "driftloop_inference"], env=env, stdout=log, stderr=log
    )


def measure(args: argparse.Namespace, endpoint: str, rows: dict[str, Any]) -> list[Phase]:
    probes = [infer_request(rows, i, 1, raw=False) for i in range(PROBES)]
    large = infer_request(rows, 0, args.rows, raw=args.large_format == "raw")
    print(
        f"one-row request: {len(probes[0])} bytes; large request: {args.rows} rows, "
        f"{len(large)} bytes ({args.large_format})"
    )
    asyncio.run(_probe(endpoint, probes, args.warmup))

    alone = Phase("alone")
    latencies, alone.errors = asyncio.run(_probe(endpoint, probes, args.seconds))
    alone.calls = len(latencies)
    alone.p50_ms, alone.p99_ms = _percentile_ms(latencies, 50), _percentile_ms(latencies, 99)
    alone.max_ms = _percentile_ms(latencies, 100)

    beside = Phase(f"beside {args.large_loops} x {args.rows} rows")
    context = multiprocessing.get_context("spawn")
    running, stop, out = context.Event(), context.Event(), context.Queue()
    child = context.Process(
        target=_large_load, args=(endpoint, large, args.large_loops, running, stop, out)
    )
    child.start()
    try:
        if not running.wait(60):
            raise RuntimeError("the large-request client did not start")
        time.sleep(args.warmup)
        latencies, beside.errors = asyncio.run(_probe(endpoint, probes, args.seconds))
    finally:
        stop.set()
    result = out.get(timeout=CALL_TIMEOUT_S + 30)
    child.join(10)
    beside.calls = len(latencies)
    beside.p50_ms, beside.p99_ms = _percentile_ms(latencies, 50), _percentile_ms(latencies, 99)
    beside.max_ms = _percentile_ms(latencies, 100)
    beside.large_calls = len(result["latencies"])
    beside.large_per_s = beside.large_calls / result["seconds"]
    beside.large_p50_ms = _percentile_ms(result["latencies"], 50)
    beside.large_errors = result["errors"]
    return [alone, beside]


def report(phases: list[Phase]) -> None:
    alone = phases[0]
    print()
    print(
        f"{'one-row ModelInfer':<28} {'calls':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
        f"{'p50 x':>6} {'p99 x':>6}  large requests"
    )
    for phase in phases:
        large = (
            f"{phase.large_per_s:.1f}/s, p50 {phase.large_p50_ms:.1f} ms"
            + (f", errors {phase.large_errors}" if phase.large_errors else "")
            if phase.large_calls or phase.large_errors
            else "-"
        )
        print(
            f"{phase.name:<28} {phase.calls:>7} {phase.p50_ms:>8.2f} {phase.p99_ms:>8.2f} "
            f"{phase.max_ms:>8.1f} {phase.p50_ms / alone.p50_ms:>6.1f} "
            f"{phase.p99_ms / alone.p99_ms:>6.1f}  {large}"
            + (f"  errors {phase.errors}" if phase.errors else "")
        )
    print(f"load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs shared by all")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measuring window per phase")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up per phase, seconds")
    parser.add_argument("--rows", type=int, default=4096, help="rows per large request")
    parser.add_argument(
        "--large-loops", type=int, default=2, help="large requests in flight at once"
    )
    parser.add_argument("--large-format", choices=("raw", "typed"), default="raw")
    parser.add_argument("--json-out", type=Path, help="write the figures here as JSON")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.warmup < 0 or args.rows < 1 or args.large_loops < 1:
        parser.error("--seconds must be > 0, --warmup >= 0, --rows and --large-loops >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print("fitting and exporting the model with the trainer's code")
    onnx_bytes, rows = fit_model()
    with tempfile.TemporaryDirectory(prefix="driftloop-isolation-") as folder:
        home = Path(folder)
        model = home / "payments.onnx"
        model.write_bytes(onnx_bytes)
        port = free_port()
        endpoint = f"127.0.0.1:{port}"
        server = start_server(home, model, port)
        try:
            asyncio.run(wait_ready(endpoint, server, 60))
            phases = measure(args, endpoint, rows)
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
    report(phases)
    if args.json_out:
        args.json_out.write_text(json.dumps([asdict(phase) for phase in phases], indent=2) + "\n")
    failed = any(phase.errors for phase in phases)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
