"""Fixtures: labelled training sets in the feature store's Parquet schema, for the trainer's tests.

The label depends on amount, channel and hour, so a model that learns anything
reaches a ROC AUC well above 0.8 on the most recent rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from driftloop_core.featureset import FeatureSet, default_featureset_path, load_featureset
from driftloop_features.offline import dataset_schema

T0_MS = 1_763_800_000_000


def payments() -> FeatureSet:
    return load_featureset(default_featureset_path())


def write_training_set(
    path: Path, featureset: FeatureSet, rows: int = 600, seed: int = 7, missing: bool = True
) -> Path:
    rng = np.random.default_rng(seed)
    amount = rng.gamma(2.0, 40.0, rows)
    channel = rng.choice(["web", "pos", "atm"], rows)
    hour = rng.integers(0, 24, rows)
    mean_1h = amount * rng.uniform(0.5, 1.5, rows)
    count_10m = rng.integers(0, 6, rows)
    score = 0.06 * (amount - 80) + 3.0 * (channel == "web") + 2.5 * (hour < 6) - 1.5
    label = (rng.uniform(0, 1, rows) < 1 / (1 + np.exp(-score))).astype(np.int64)
    records = []
    for i in range(rows):
        records.append(
            {
                "event_id": f"e{i:05d}",
                "entity_id": f"c{i % 37}",
                # Shuffled on disk: the trainer must order rows by event time itself.
                "event_time": T0_MS + int((i * 7919) % rows) * 1000,
                "amount": None if missing and i % 50 == 3 else float(amount[i]),
                "channel": None if missing and i % 61 == 5 else str(channel[i]),
                "hour": int(hour[i]),
                "amount_mean_1h": float(mean_1h[i]),
                "txn_count_10m": int(count_10m[i]),
                "label": int(label[i]),
            }
        )
    table = pa.Table.from_pylist(records, schema=dataset_schema(featureset))
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def write_empty_training_set(path: Path, featureset: FeatureSet) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist([], schema=dataset_schema(featureset)), path)
    return path


@pytest.fixture
def featureset() -> FeatureSet:
    return payments()


@pytest.fixture
def training_set(tmp_path: Path, featureset: FeatureSet) -> Path:
    return write_training_set(tmp_path / "sets" / "payments.parquet", featureset)


@pytest.fixture
def empty_training_set(tmp_path: Path, featureset: FeatureSet) -> Path:
    return write_empty_training_set(tmp_path / "sets" / "empty.parquet", featureset)
