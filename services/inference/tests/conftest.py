"""Inference fixtures: real ONNX models, an in-process server, the tritonclient driver."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from driftloop_core.settings import Settings, load_settings
from driftloop_inference.bootstrap import InferenceService
from driftloop_inference.config import InferenceSettings

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from models import generic_onnx, payments_onnx  # noqa: E402


@pytest.fixture(scope="session")
def payments_v1() -> bytes:
    return payments_onnx(c=1.0)


@pytest.fixture(scope="session")
def payments_v2() -> bytes:
    return payments_onnx(c=0.01)


@pytest.fixture(scope="session")
def generic_model() -> bytes:
    return generic_onnx()


@pytest.fixture
def local_settings(tmp_path: Path) -> Settings:
    """Settings for servers that need no broker."""
    return load_settings(home=tmp_path / "home", service_name="inference-test")


ServeFile = Callable[..., Awaitable[InferenceService]]


@pytest.fixture
async def serve_file(tmp_path: Path, local_settings: Settings) -> AsyncIterator[ServeFile]:
    """Start a server on a free port serving ONNX bytes as `name` v`version`."""
    running: list[InferenceService] = []

    async def serve(
        data: bytes | None, name: str = "payments", version: int = 1, **config: Any
    ) -> InferenceService:
        path = None
        if data is not None:
            path = tmp_path / f"{name}-{version}-{len(running)}.onnx"
            path.write_bytes(data)
        settings_ = InferenceSettings(
            model_file=path,
            model_file_version=version,
            events=False,
            **config,
        )
        service = InferenceService(local_settings, settings_, "127.0.0.1:0", model_name=name)
        await service.start()
        running.append(service)
        if data is not None:
            await service.wait_ready(30)
        return service

    try:
        yield serve
    finally:
        for service in running:
            await service.stop()


def tensor_json(name: str, array: np.ndarray[Any, Any], datatype: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
    if datatype == "BYTES":
        spec["strings"] = [str(item) for item in array.ravel()]
    else:
        spec["b64"] = base64.b64encode(np.ascontiguousarray(array).tobytes()).decode()
    return spec


def output_array(entry: dict[str, Any]) -> np.ndarray[Any, Any]:
    from driftloop_inference.codec import NUMPY_TYPES

    if entry["datatype"] == "BYTES":
        return np.array(entry["strings"], dtype=object).reshape(entry["shape"])
    return np.frombuffer(
        base64.b64decode(entry["b64"]), dtype=NUMPY_TYPES[entry["datatype"]]
    ).reshape(entry["shape"])


async def run_triton(url: str, calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run calls with tritonclient.grpc in a child process; its answers."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(HERE / "triton_client.py"),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(
        process.communicate(json.dumps({"url": url, "calls": calls}).encode()), 60
    )
    assert process.returncode == 0, stderr.decode()
    answers: list[dict[str, Any]] = json.loads(stdout)
    return answers


@pytest.fixture
def triton() -> Callable[[str, list[dict[str, Any]]], Awaitable[list[dict[str, Any]]]]:
    return run_triton
