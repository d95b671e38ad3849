"""`driftloop models ...` as a user runs it: a subprocess against a real registry."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from driftloop.v1 import events_pb2, registry_pb2, registry_pb2_grpc
from driftloop_core.grpc.client import insecure_channel
from driftloop_core.settings import Settings
from driftloop_registry.bootstrap import RegistryService

pytestmark = pytest.mark.integration

TOKEN = "s3cret-admin-token"
READ_TOKEN = "s3cret-read-token"


async def driftloop(*args: str, token: str | None = None) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTLOOP_")}
    # An operator who may read; promoting takes the admin token besides.
    env["DRIFTLOOP_READ_TOKEN"] = READ_TOKEN
    if token is not None:
        env["DRIFTLOOP_ADMIN_TOKEN"] = token
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
    return process.returncode, out.decode(), err.decode()


async def test_models_commands(
    service: RegistryService,
    admin_settings: Settings,
    model_name: str,
    make_trained: Callable[..., events_pb2.ModelTrained],
    send_trained: Callable[[events_pb2.ModelTrained], Awaitable[None]],
    onnx_bytes: Callable[[float], bytes],
    wait_for: Any,
    tmp_path: Path,
) -> None:
    await send_trained(make_trained("run-1", 0.8, scale=1.0))
    await send_trained(make_trained("run-2", 0.7, champion_auc=0.8, champion_version=1, scale=2.0))
    async with insecure_channel(service.endpoint, admin_settings) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)

        async def two() -> bool:
            reply = await stub.ListVersions(registry_pb2.ListVersionsRequest(model=model_name))
            return len(reply.versions) == 2

        assert await wait_for(two)
    endpoint = ("--endpoint", service.endpoint)

    target = tmp_path / "out" / "model.onnx"
    # Independent reads (and the refused promote) run side by side: each
    # command is a fresh Python process whose startup dominates.
    listing, showing, downloading, refused = await asyncio.gather(
        driftloop("models", "list", model_name, "--json", *endpoint),
        driftloop("models", "show", model_name, "2", "--json", *endpoint),
        driftloop("models", "download", model_name, "2", "-o", str(target), *endpoint),
        driftloop("models", "promote", model_name, "2", "--reason", "try", *endpoint),
    )
    code, out, err = listing
    assert code == 0, err
    listed = json.loads(out)["versions"]
    assert [(v["name"], v["version"], v["status"], v["champion"]) for v in listed] == [
        (model_name, 1, "champion", True),
        (model_name, 2, "candidate", False),
    ]
    assert listed[1]["metrics"]["roc_auc"] == pytest.approx(0.7)

    code, out, err = showing
    assert code == 0, err
    shown = json.loads(out)
    original = onnx_bytes(2.0)
    assert shown["sha256"] == hashlib.sha256(original).hexdigest()
    assert shown["dataset_digest"] == "d" * 64
    assert shown["signature"]["inputs"][0]["name"] == "features"
    assert shown["created_at"].endswith("Z")
    assert "not promoted" in shown["status_reason"]

    code, out, err = downloading
    assert code == 0, err
    assert target.read_bytes() == original

    code, out, err = refused
    assert code == 1
    assert "UNAUTHENTICATED" in err

    code, out, err = await driftloop(
        "models", "promote", model_name, "2", "--reason", "try", "--json", *endpoint, token=TOKEN
    )
    assert code == 0, err
    assert json.loads(out)["to_version"] == 2

    code, out, err = await driftloop(
        "models", "rollback", model_name, "--reason", "undo", "--json", *endpoint, token=TOKEN
    )
    assert code == 0, err
    change = json.loads(out)
    assert (change["kind"], change["from_version"], change["to_version"]) == ("rollback", 2, 1)
