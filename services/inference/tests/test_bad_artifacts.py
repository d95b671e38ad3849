"""Bad artifacts offered to a serving model: corrupt, truncated, wrong digest, or
ONNX that reads its weights from a file outside the artifact. Each is refused at
its own stage, counted, and the served version answers every call throughout."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnx
import pytest
from driftloop_inference.metrics import MODEL_LOAD_FAILURES
from inference import grpc_service_pb2_grpc as oip_grpc
from models import payments_feeds, typed_infer_request

pytestmark = pytest.mark.integration


def _with_external_weights(model_bytes: bytes, folder: Path) -> bytes:
    """The same model carrying a tensor whose data is a file outside any folder
    of the artifact's (the exported classifier keeps its weights in node
    attributes, so the tensor is an added initializer)."""
    model = onnx.ModelProto.FromString(model_bytes)
    outside = folder / "weights.bin"
    outside.write_bytes(np.arange(4, dtype=np.float32).tobytes())
    tensor = model.graph.initializer.add(
        name="outside_weights", data_type=onnx.TensorProto.FLOAT, dims=[4]
    )
    tensor.data_location = onnx.TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", str(outside)
    return model.SerializeToString()


async def test_bad_artifacts_are_refused_while_the_served_version_keeps_answering(
    serve_file: Any, payments_v1: bytes, payments_v2: bytes, tmp_path: Path
) -> None:
    service = await serve_file(payments_v1, version=1)
    repository = service.repository
    good = payments_v2
    offers = {
        # (bytes the store returns, sha256 the registry vouches for, stage expected)
        "corrupt": (b"\x08\x07" + bytes(range(256)) * 40, None, "onnx"),
        "truncated": (good[: len(good) // 2], None, "onnx"),
        "wrong digest": (good, "f" * 64, "digest"),
        "external data": (_with_external_weights(good, tmp_path), None, "external_data"),
    }
    request = typed_infer_request("payments", payments_feeds(1))
    answered: list[str] = []
    failures: list[str] = []
    stop = asyncio.Event()

    async def caller(channel: grpc.aio.Channel) -> None:
        stub = oip_grpc.GRPCInferenceServiceStub(channel)
        while not stop.is_set():
            try:
                reply = await stub.ModelInfer(request, timeout=5)
                answered.append(reply.model_version)
            except grpc.aio.AioRpcError as error:
                failures.append(f"{error.code().name}: {error.details()}")
            await asyncio.sleep(0.002)

    async with grpc.aio.insecure_channel(service.endpoint) as channel:
        callers = [asyncio.create_task(caller(channel)) for _ in range(4)]
        try:
            for version, (label, (data, vouched, stage)) in enumerate(offers.items(), start=2):
                digest = vouched or hashlib.sha256(data).hexdigest()

                async def fetch(name: str, wanted: int, data: bytes = data) -> tuple[bytes, str]:
                    return data, hashlib.sha256(data).hexdigest()

                before = MODEL_LOAD_FAILURES.labels("payments", stage)._value.get()
                loaded = await repository.load_version(version, digest, fetch)
                assert loaded is False, f"{label}: accepted"
                assert MODEL_LOAD_FAILURES.labels("payments", stage)._value.get() == before + 1, (
                    f"{label}: not refused at stage {stage} ({repository.last_error})"
                )
                assert repository.current is not None and repository.current.version == 1
                assert repository.last_error, label
            seen = len(answered)
            await asyncio.sleep(0.2)
            assert len(answered) > seen, "the served version stopped answering"
        finally:
            stop.set()
            await asyncio.gather(*callers)
    assert not failures, failures[:3]
    assert answered and set(answered) == {"1"}

    # And a good artifact after all of them is still taken.
    async def fetch_good(name: str, wanted: int) -> tuple[bytes, str]:
        return good, hashlib.sha256(good).hexdigest()

    assert await repository.load_version(9, hashlib.sha256(good).hexdigest(), fetch_good)
    assert repository.current is not None and repository.current.version == 9
