"""Versions and alias changes as the protobuf messages the registry publishes and serves."""

from __future__ import annotations

from driftloop.v1 import common_pb2, events_pb2, registry_pb2
from google.protobuf import json_format

from driftloop_registry.domain import (
    CHAMPION,
    AliasChange,
    Kind,
    ModelVersion,
    Rollout,
    RolloutKind,
    Stage,
    Status,
)

STATUS = {
    Status.CANDIDATE: common_pb2.MODEL_VERSION_STATUS_CANDIDATE,
    Status.CHAMPION: common_pb2.MODEL_VERSION_STATUS_CHAMPION,
    Status.ARCHIVED: common_pb2.MODEL_VERSION_STATUS_ARCHIVED,
}
OUTCOME = {
    Stage.PROMOTED: events_pb2.ROLLOUT_OUTCOME_PROMOTED,
    Stage.REJECTED: events_pb2.ROLLOUT_OUTCOME_REJECTED,
    Stage.SUPERSEDED: events_pb2.ROLLOUT_OUTCOME_SUPERSEDED,
    Stage.ROLLED_BACK: events_pb2.ROLLOUT_OUTCOME_ROLLED_BACK,
    Stage.KEPT: events_pb2.ROLLOUT_OUTCOME_KEPT,
}
ROLLOUT_KIND = {
    RolloutKind.TRIAL: events_pb2.ROLLOUT_KIND_TRIAL,
    RolloutKind.WATCH: events_pb2.ROLLOUT_KIND_WATCH,
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


def rollout_policy(rollout: Rollout) -> events_pb2.RolloutPolicy:
    policy = rollout.policy
    message = events_pb2.RolloutPolicy(
        min_paired=policy.min_paired, alpha=policy.alpha, beta=policy.beta, effect=policy.effect
    )
    message.max_duration.FromMilliseconds(int(policy.max_duration_s * 1000))
    if policy.latency_budget_ms > 0:
        message.latency_budget_p99.FromMicroseconds(int(policy.latency_budget_ms * 1000))
    return message


def rollout_started(rollout: Rollout, candidate: ModelVersion) -> events_pb2.ModelRolloutStarted:
    message = events_pb2.ModelRolloutStarted(
        rollout_id=rollout.rollout_id,
        model=rollout.model,
        candidate_version=rollout.candidate_version,
        champion_version=rollout.champion_version,
        artifact=artifact_of(candidate),
        reason=rollout.gate_reason,
        policy=rollout_policy(rollout),
        kind=ROLLOUT_KIND[rollout.kind],
    )
    message.started_at.FromDatetime(rollout.started_at)
    return message


def rollout_figures(figures: dict[str, float] | None) -> events_pb2.RolloutFigures | None:
    """The figures a verdict carried, as stored (field name -> value)."""
    if figures is None:
        return None
    known = set(events_pb2.RolloutFigures.DESCRIPTOR.fields_by_name)
    message = events_pb2.RolloutFigures()
    for name, value in figures.items():
        if name in known:
            field = events_pb2.RolloutFigures.DESCRIPTOR.fields_by_name[name]
            is_int = field.type in (field.TYPE_INT64, field.TYPE_INT32)
            setattr(message, name, int(value) if is_int else float(value))
    return message


def figures_of(message: events_pb2.RolloutFigures) -> dict[str, float]:
    return {field.name: value for field, value in message.ListFields()}


def rollout_ended(rollout: Rollout) -> events_pb2.ModelRolloutEnded:
    message = events_pb2.ModelRolloutEnded(
        rollout_id=rollout.rollout_id,
        model=rollout.model,
        candidate_version=rollout.candidate_version,
        champion_version=rollout.champion_version,
        outcome=OUTCOME[rollout.stage],
        reason=rollout.end_reason,
        kind=ROLLOUT_KIND[rollout.kind],
    )
    figures = rollout_figures(rollout.figures)
    if figures is not None:
        message.figures.CopyFrom(figures)
    if rollout.ended_at is not None:
        message.ended_at.FromDatetime(rollout.ended_at)
    return message


def rollout(rollout: Rollout) -> registry_pb2.Rollout:
    message = registry_pb2.Rollout(
        rollout_id=rollout.rollout_id,
        model=rollout.model,
        candidate_version=rollout.candidate_version,
        champion_version=rollout.champion_version,
        stage=rollout.stage.value,
        gate_reason=rollout.gate_reason,
        end_reason=rollout.end_reason,
        policy=rollout_policy(rollout),
        kind=rollout.kind.value,
    )
    message.started_at.FromDatetime(rollout.started_at)
    if rollout.ended_at is not None:
        message.ended_at.FromDatetime(rollout.ended_at)
    figures = rollout_figures(rollout.figures)
    if figures is not None:
        message.figures.CopyFrom(figures)
    return message
