"""A `ModelTrained` is checked like a request, on the real registry and broker:
anyone who may write to `models.trained` can send one. Each bad record is
dead-lettered naming its field and rule, nothing of it is registered, and the
partition moves on to the good record behind them."""

from __future__ import annotations

import math
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from driftloop.v1 import common_pb2, events_pb2, registry_pb2, registry_pb2_grpc
from driftloop_core.artifacts import ArtifactStore, sha256_hex
from driftloop_core.grpc.client import insecure_channel
from driftloop_core.settings import Settings
from driftloop_registry.bootstrap import RegistryService
from driftloop_registry.config import RegistrySettings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

Make = Callable[..., events_pb2.ModelTrained]
Send = Callable[[events_pb2.ModelTrained], Awaitable[None]]


def plant(artifacts: ArtifactStore, data: bytes, make: Callable[[Path], None]) -> str:
    """Make the store's path for `data`'s digest with `make` (a symlink, a FIFO)
    instead of writing the bytes; the digest."""
    digest = sha256_hex(data)
    path = artifacts.local_path(common_pb2.Artifact(sha256=digest))
    assert path is not None
    path.parent.mkdir(parents=True, exist_ok=True)
    make(path)
    return digest


async def test_bad_model_trained_records_are_dead_lettered_by_field_and_rule(
    service: RegistryService,
    admin_settings: Settings,
    config: RegistrySettings,
    artifacts: ArtifactStore,
    model_name: str,
    make_trained: Make,
    send_trained: Send,
    read_events: Any,
    onnx_bytes: Callable[[float], bytes],
    tmp_path: Path,
    wait_for: Any,
) -> None:
    # A valid model outside the store, reached through a symlink planted in it:
    # its digest matches, but the registry reads only the store's own files.
    outside = tmp_path / "outside.onnx"
    outside.write_bytes(onnx_bytes(7.0))
    linked = plant(artifacts, onnx_bytes(7.0), lambda path: path.symlink_to(outside))
    # A FIFO under a digest: opening it would wait for a writer forever.
    fifo = plant(artifacts, onnx_bytes(8.0), lambda path: os.mkfifo(path))

    def with_artifact(run: str, digest: str) -> events_pb2.ModelTrained:
        message = make_trained(run, 0.8)
        message.artifact.sha256 = digest
        return message

    nan_metric = make_trained("run-nan", 0.8)
    nan_metric.metrics["roc_auc"] = math.nan
    infinite = make_trained("run-inf", 0.8, champion_auc=0.7, champion_version=1)
    infinite.champion_metrics["roc_auc"] = -math.inf
    bad_dataset = make_trained("run-dataset", 0.8)
    bad_dataset.dataset.sha256 = "../" * 30
    negative = make_trained("run-negative", 0.8)
    negative.artifact.size_bytes = -1
    bad = [
        (with_artifact("run-symlink", linked), "artifact.sha256", "regular_file"),
        (with_artifact("run-fifo", fifo), "artifact.sha256", "regular_file"),
        (with_artifact("run-upper", sha256_hex(b"x").upper()), "artifact.sha256", "format"),
        (make_trained("r" * 201, 0.8), "request_id", "length"),
        (nan_metric, "metrics.roc_auc", "finite"),
        (infinite, "champion_metrics.roc_auc", "finite"),
        (bad_dataset, "dataset.sha256", "format"),
        (negative, "artifact.size_bytes", "min"),
    ]
    for message, _, _ in bad:
        await send_trained(message)
    await send_trained(make_trained("run-good", 0.8))

    letters = await read_events(
        admin_settings,
        config.deadletter_topic,
        model_name,
        events_pb2.DeadLetter,
        count=len(bad),
        within=60,
    )
    assert [(letter.field, letter.rule) for _, letter in letters] == [
        (field, rule) for _, field, rule in bad
    ]
    reasons = [letter.reason for _, letter in letters]
    assert reasons[0] == (f"artifact {linked}: the stored path resolves outside the artifact store")
    assert reasons[1].startswith(f"artifact {fifo}: the stored path is not a regular file")
    assert reasons[3] == "request_id: at most 200 bytes, got 201"
    assert reasons[4] == "metrics.roc_auc: must be a finite number, got nan"
    assert str(outside) not in "".join(reasons)

    async with insecure_channel(service.endpoint, admin_settings) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)

        async def registered() -> list[str]:
            reply = await stub.ListVersions(registry_pb2.ListVersionsRequest(model=model_name))
            return [v.request_id for v in reply.versions]

        assert await wait_for(registered) == ["run-good"]
