"""Driftloop events as the services write them, for tests that play one service."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from driftloop.v1 import common_pb2, events_pb2


def model_trained(
    model: str,
    artifact: common_pb2.Artifact,
    request_id: str,
    auc: float,
    *,
    feature_names: Sequence[str] = ("amount", "hour"),
    champion_auc: float | None = None,
    champion_version: int | None = None,
    row_count: int = 300,
    **fields: Any,
) -> events_pb2.ModelTrained:
    """A trainer's `ModelTrained` for `artifact` with `roc_auc` = `auc`; the
    champion's figures when given, and any further fields (e.g. `signature`,
    `params`, `metrics` to replace the default ones)."""
    values: dict[str, Any] = {
        "request_id": request_id,
        "model": model,
        "artifact": artifact,
        "metrics": {"roc_auc": auc},
        "dataset": common_pb2.Dataset(
            uri="/tmp/train.parquet", sha256="d" * 64, row_count=row_count
        ),
        "code_version": "test",
        "feature_names": list(feature_names),
        "algorithm": "logistic_regression",
        "eval_rows": 100,
    }
    values.update(fields)
    message = events_pb2.ModelTrained(**values)
    if champion_auc is not None:
        message.champion_metrics["roc_auc"] = champion_auc
    if champion_version is not None:
        message.champion_version = champion_version
    return message
