"""The feature service's bounds, through a real gRPC server: training-set files
do not pile up however often GetTrainingSet is called over a growing log, and
ids longer than 256 bytes are refused naming the field."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pyarrow as pa
import pytest
from driftloop.v1 import features_pb2, features_pb2_grpc
from driftloop_core.feature_math import FeatureMath
from driftloop_core.featureset import FeatureSet, default_featureset_path, load_featureset
from driftloop_core.grpc.server import build_server
from driftloop_core.settings import Settings, load_settings
from driftloop_features.adapters.duckdb_reader import OfflineStore
from driftloop_features.adapters.parquet_log import write_parquet_atomic
from driftloop_features.entrypoints.grpc import FeatureServicer
from driftloop_features.offline import datasets_dir, offline_dir, rows_schema

FS = load_featureset(default_featureset_path())
T0 = 1_763_800_000_000
KEPT = 3


def log_rows(settings: Settings, fs: FeatureSet, first: int, count: int) -> None:
    """`count` labelled rows, event ids from `first` on, as one file of the log."""
    rows: list[dict[str, Any]] = [
        {
            "event_id": f"e{i}",
            "entity_id": f"c{i % 5}",
            "event_time": T0 + i * 1000,
            "amount": 10.0 + i,
            "channel": ("web", "pos", "atm")[i % 3],
            "hour": i % 24,
            "amount_mean_1h": 5.0,
            "txn_count_10m": i % 4,
            "has_label": True,
            "label": i % 2,
            "source_partition": 0,
            "source_offset": i,
            "source_timestamp": T0 + i,
        }
        for i in range(first, first + count)
    ]
    table = pa.Table.from_pylist(rows, schema=rows_schema(fs))
    write_parquet_atomic(table, offline_dir(settings, fs) / "rows" / f"part-{first:06d}.parquet")


@dataclass
class Service:
    settings: Settings
    stub: features_pb2_grpc.FeatureServiceStub


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[Service]:
    """The FeatureService over the payments log, keeping KEPT training sets."""
    settings = load_settings(home=tmp_path / "home", service_name="features-test")
    servicer = FeatureServicer(
        FeatureMath(FS), lambda entity_id: None, OfflineStore(settings, FS, datasets_kept=KEPT)
    )
    server = build_server(
        settings,
        [
            (
                features_pb2_grpc.add_FeatureServiceServicer_to_server,
                servicer,
                "driftloop.v1.FeatureService",
            )
        ],
        "127.0.0.1:0",
    )
    await server.start()
    try:
        async with grpc.aio.insecure_channel(server.endpoint) as channel:
            yield Service(settings, features_pb2_grpc.FeatureServiceStub(channel))
    finally:
        await server.stop(0)


async def test_training_sets_do_not_pile_up_over_a_growing_log(service: Service) -> None:
    folder = datasets_dir(service.settings)
    folder.mkdir(parents=True, exist_ok=True)
    # Another model's training set in the same folder is not this store's to delete.
    other = folder / "payments_v2-0123456789ab.parquet"
    other.write_bytes(b"another model's rows")
    calls = 12
    built: list[Path] = []
    for call in range(calls):
        log_rows(service.settings, FS, first=call * 10, count=10)
        reply = await service.stub.GetTrainingSet(
            features_pb2.GetTrainingSetRequest(model=FS.name), timeout=30
        )
        assert reply.dataset.row_count == (call + 1) * 10
        path = Path(reply.dataset.uri)
        # The file the reply names is there for the trainer to read.
        assert await asyncio.to_thread(path.is_file)
        built.append(path)
        # A later file always has a later modification time than the one before.
        await asyncio.sleep(0.01)
    assert len(set(built)) == calls, "every call had other rows"
    left = sorted(p.name for p in folder.glob(f"{FS.name}-*.parquet"))
    assert left == sorted(p.name for p in built[-KEPT:])
    assert other.read_bytes() == b"another model's rows"
    assert not list(folder.glob(".*.tmp"))

    # The same rows again make the same file, and nothing more.
    again = await service.stub.GetTrainingSet(
        features_pb2.GetTrainingSetRequest(model=FS.name), timeout=30
    )
    assert Path(again.dataset.uri) == built[-1]
    assert len(list(folder.glob(f"{FS.name}-*.parquet"))) == KEPT


def test_how_many_are_kept_is_a_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path / "home")
    monkeypatch.setenv("DRIFTLOOP_FEATURES_DATASETS_KEPT", "1")
    store = OfflineStore(settings, FS)
    paths = []
    for call in range(3):
        log_rows(settings, FS, first=call * 10, count=10)
        paths.append(store.training_set().path)
        time.sleep(0.01)
    assert [p.exists() for p in paths] == [False, False, True]
    monkeypatch.setenv("DRIFTLOOP_FEATURES_DATASETS_KEPT", "0")
    with pytest.raises(ValueError, match="datasets_kept"):
        OfflineStore(settings, FS)


async def test_ids_over_256_bytes_are_refused_naming_the_field(service: Service) -> None:
    # 64 four-byte characters are 256 bytes: as long as an id may be.
    longest = "\U0001f600" * 64
    reply = await service.stub.GetOnlineFeatures(
        features_pb2.GetOnlineFeaturesRequest(entity_ids=["c1", longest, "x" * 256]), timeout=5
    )
    assert [e.entity_id for e in reply.entities] == ["c1", longest, "x" * 256]

    for entity_ids, details in [
        (["c1", "x" * 257], "entity_ids[1]: at most 256 bytes, got 257"),
        (["\U0001f600" * 65], "entity_ids[0]: at most 256 bytes, got 260"),
        (["c1", "c2", "é" * 200], "entity_ids[2]: at most 256 bytes, got 400"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await service.stub.GetOnlineFeatures(
                features_pb2.GetOnlineFeaturesRequest(entity_ids=entity_ids), timeout=5
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert refused.value.details() == details

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await service.stub.GetTrainingSet(
            features_pb2.GetTrainingSetRequest(model="m" * 1000), timeout=5
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == "model: at most 256 bytes, got 1000"
