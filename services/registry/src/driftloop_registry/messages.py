"""Versions and alias changes as the protobuf messages the registry publishes and serves."""

from __future__ import annotations

from driftloop.v1 import common_pb2, events_pb2, registry_pb2
from google.protobuf import json_format

from driftloop_registry.domain import CHAMPION, AliasChange, Kind, ModelVersion, Status

STATUS = {
    Status.CANDIDATE: common_pb2.MODEL_VERSION_STATUS_CANDIDATE,
    Status.CHAMPION: common_pb2.MODEL_VERSION_STATUS_CHAMPION,
    Status.ARCHIVED: common_pb2.MODEL_VERSION_STATUS_ARCHIVED,
}
KIND = {
    Kind.PROMOTE: events_pb2.PROMOTION_KIND_PROMOTE,
    Kind.ROLLBACK: events_pb2.PROMOTION_KIND_ROLLBACK,
}


def artifact_of(row: ModelVersion) -> common_pb2.Artifact:
    return common_pb2.Artifact(
        uri=row.artifact_uri,
        sha256=row.sha256,
        size_bytes=row.size_bytes,
        media_type=row.media_type,
    )


def model_version(row: ModelVersion) -> registry_pb2.ModelVersion:
    trained = events_pb2.ModelTrained.FromString(row.trained_event)
    message = registry_pb2.ModelVersion(
        model=row.model,
        version=row.version,
        status=STATUS[row.status],
        status_reason=row.status_reason,
        aliases=[CHAMPION] if row.status == Status.CHAMPION else [],
        artifact=artifact_of(row),
        signature=json_format.ParseDict(row.signature, common_pb2.ModelSignature()),
        metrics=row.metrics,
        champion_metrics=row.champion_metrics,
        dataset=trained.dataset,
        params=row.params,
        code_version=row.code_version,
        request_id=row.request_id,
        feature_names=row.feature_names,
        reference=dict(trained.reference),
        algorithm=row.algorithm,
        trigger=trained.trigger,
        parent_drift_id=trained.parent_drift_id,
        eval_rows=row.eval_rows,
    )
    if row.champion_version is not None:
        message.champion_version = row.champion_version
    if row.parent_version is not None:
        message.parent_version = row.parent_version
    message.created_at.FromDatetime(row.created_at)
    if trained.HasField("trained_at"):
        message.trained_at.CopyFrom(trained.trained_at)
    return message


def model_registered(row: ModelVersion) -> events_pb2.ModelRegistered:
    message = events_pb2.ModelRegistered(
        model=row.model,
        version=row.version,
        # The status the gate gave it, even if the alias has moved on since.
        status=STATUS[row.gate_status],
        reason=row.gate_reason,
        request_id=row.request_id,
        artifact=artifact_of(row),
        metrics=row.metrics,
        champion_metrics=row.champion_metrics,
        dataset_sha256=row.dataset_digest,
    )
    if row.champion_version is not None:
        message.champion_version = row.champion_version
    message.registered_at.FromDatetime(row.created_at)
    return message


def model_promoted(change: AliasChange, target: ModelVersion) -> events_pb2.ModelPromoted:
    message = events_pb2.ModelPromoted(
        promotion_id=change.promotion_id,
        model=change.model,
        to_version=change.to_version,
        alias=change.alias,
        actor=change.actor,
        reason=change.reason,
        kind=KIND[change.kind],
        artifact=artifact_of(target),
    )
    if change.from_version is not None:
        message.from_version = change.from_version
    message.promoted_at.FromDatetime(change.at)
    return message
