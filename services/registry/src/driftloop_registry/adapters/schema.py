"""The registry's SQL tables, the engine that reaches them, and the mapping
between their rows and the domain records.

Only portable column types are used (JSON, LargeBinary, timezone-aware
DateTime, BigInteger), so the embedded SQLite file and a PostgreSQL URL behave
the same. The rows stay inside `adapters/`: `version_of` and `change_of` turn
them into the frozen records the handlers see.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from driftloop.v1 import events_pb2
from google.protobuf import json_format
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Engine,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from driftloop_registry.domain import (
    AliasChange,
    GateDecision,
    Kind,
    ModelVersion,
    Rollout,
    RolloutKind,
    RolloutPolicy,
    Stage,
    Status,
)

_ONE_CHAMPION = text("status = 'champion'")


class Base(DeclarativeBase):
    pass


def as_utc(value: datetime) -> datetime:
    """SQLite hands timezone-aware columns back naive; they were stored as UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class VersionRow(Base):
    __tablename__ = "model_versions"
    __table_args__ = (
        UniqueConstraint("model", "version", name="uq_model_version"),
        UniqueConstraint("model", "request_id", name="uq_model_request"),
        Index(
            "uq_model_champion",
            "model",
            unique=True,
            sqlite_where=_ONE_CHAMPION,
            postgresql_where=_ONE_CHAMPION,
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String(200), index=True)
    version: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))
    status_reason: Mapped[str] = mapped_column(Text, default="")
    # What the gate decided at registration; `status` moves on with the alias.
    gate_status: Mapped[str] = mapped_column(String(16))
    gate_reason: Mapped[str] = mapped_column(Text, default="")
    artifact_uri: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    media_type: Mapped[str] = mapped_column(String(100), default="")
    signature: Mapped[dict[str, Any]] = mapped_column(JSON)
    metrics: Mapped[dict[str, float]] = mapped_column(JSON)
    champion_metrics: Mapped[dict[str, float]] = mapped_column(JSON)
    champion_version: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    dataset_uri: Mapped[str] = mapped_column(Text, default="")
    dataset_digest: Mapped[str] = mapped_column(String(64), default="")
    dataset_rows: Mapped[int] = mapped_column(BigInteger, default=0)
    window_start: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    window_end: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    params: Mapped[dict[str, str]] = mapped_column(JSON)
    code_version: Mapped[str] = mapped_column(String(200), default="")
    parent_version: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    request_id: Mapped[str] = mapped_column(String(200))
    algorithm: Mapped[str] = mapped_column(String(100), default="")
    eval_rows: Mapped[int] = mapped_column(BigInteger, default=0)
    feature_names: Mapped[list[str]] = mapped_column(JSON)
    # The whole ModelTrained as received: reference distributions, trigger and
    # the rest of the lineage are read back from it without a column each.
    trained_event: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    registered_event_id: Mapped[str] = mapped_column(String(64))
    registered_published: Mapped[bool] = mapped_column(Boolean, default=False)


class AliasRow(Base):
    __tablename__ = "alias_history"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    promotion_id: Mapped[str] = mapped_column(String(64), unique=True)
    model: Mapped[str] = mapped_column(String(200), index=True)
    alias: Mapped[str] = mapped_column(String(100))
    from_version: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    to_version: Mapped[int] = mapped_column(BigInteger)
    actor: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    published: Mapped[bool] = mapped_column(Boolean, default=False)


class RolloutRow(Base):
    """A rollout, and whether its started and ended events are published (the outbox)."""

    __tablename__ = "rollouts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    rollout_id: Mapped[str] = mapped_column(String(64), unique=True)
    model: Mapped[str] = mapped_column(String(200), index=True)
    kind: Mapped[str] = mapped_column(String(8), default="trial")
    candidate_version: Mapped[int] = mapped_column(BigInteger)
    champion_version: Mapped[int] = mapped_column(BigInteger)
    stage: Mapped[str] = mapped_column(String(16))
    gate_reason: Mapped[str] = mapped_column(Text, default="")
    policy: Mapped[dict[str, Any]] = mapped_column(JSON)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    end_reason: Mapped[str] = mapped_column(Text, default="")
    figures: Mapped[dict[str, float] | None] = mapped_column(JSON, nullable=True)
    started_published: Mapped[bool] = mapped_column(Boolean, default=False)
    ended_published: Mapped[bool] = mapped_column(Boolean, default=False)


def rollout_of(row: RolloutRow) -> Rollout:
    return Rollout(
        rollout_id=row.rollout_id,
        model=row.model,
        candidate_version=row.candidate_version,
        champion_version=row.champion_version,
        stage=Stage(row.stage),
        gate_reason=row.gate_reason,
        policy=RolloutPolicy(**row.policy),
        started_at=as_utc(row.started_at),
        ended_at=as_utc(row.ended_at) if row.ended_at is not None else None,
        end_reason=row.end_reason,
        figures=row.figures,
        kind=RolloutKind(row.kind),
    )


def version_of(row: VersionRow) -> ModelVersion:
    return ModelVersion(
        model=row.model,
        version=row.version,
        status=Status(row.status),
        status_reason=row.status_reason,
        gate_status=Status(row.gate_status),
        gate_reason=row.gate_reason,
        artifact_uri=row.artifact_uri,
        sha256=row.sha256,
        size_bytes=row.size_bytes,
        media_type=row.media_type,
        signature=row.signature,
        metrics=row.metrics,
        champion_metrics=row.champion_metrics,
        champion_version=row.champion_version,
        dataset_digest=row.dataset_digest,
        params=row.params,
        code_version=row.code_version,
        parent_version=row.parent_version,
        request_id=row.request_id,
        algorithm=row.algorithm,
        eval_rows=row.eval_rows,
        feature_names=row.feature_names,
        trained_event=row.trained_event,
        created_at=as_utc(row.created_at),
        registered_event_id=row.registered_event_id,
    )


def change_of(row: AliasRow) -> AliasChange:
    return AliasChange(
        promotion_id=row.promotion_id,
        model=row.model,
        alias=row.alias,
        from_version=row.from_version,
        to_version=row.to_version,
        actor=row.actor,
        reason=row.reason,
        kind=Kind(row.kind),
        at=as_utc(row.at),
    )


def new_version_row(
    trained: events_pb2.ModelTrained,
    version: int,
    decision: GateDecision,
    *,
    measured_champion: int | None,
    parent_version: int | None,
    at: datetime,
) -> VersionRow:
    """A new candidate version holding `trained`, with an event id of its own
    for the ModelRegistered it implies (not yet published)."""
    span = trained.dataset.time_range
    return VersionRow(
        model=trained.model,
        version=version,
        status=Status.CANDIDATE,
        status_reason=decision.reason,
        gate_status=Status.CHAMPION if decision.promote else Status.CANDIDATE,
        gate_reason=decision.reason,
        artifact_uri=trained.artifact.uri,
        sha256=trained.artifact.sha256,
        size_bytes=trained.artifact.size_bytes,
        media_type=trained.artifact.media_type,
        signature=json_format.MessageToDict(trained.signature),
        metrics=dict(trained.metrics),
        champion_metrics=dict(trained.champion_metrics),
        champion_version=measured_champion,
        dataset_uri=trained.dataset.uri,
        dataset_digest=trained.dataset.sha256,
        dataset_rows=trained.dataset.row_count,
        window_start=span.start.ToDatetime(UTC) if span.HasField("start") else None,
        window_end=span.end.ToDatetime(UTC) if span.HasField("end") else None,
        params=dict(trained.params),
        code_version=trained.code_version,
        parent_version=parent_version,
        request_id=trained.request_id,
        algorithm=trained.algorithm,
        eval_rows=trained.eval_rows,
        feature_names=list(trained.feature_names),
        trained_event=trained.SerializeToString(),
        created_at=at,
        registered_event_id=uuid.uuid4().hex,
        registered_published=False,
    )


def make_engine(url: str) -> Engine:
    """An engine for `url`; it connects on first use, not here.

    `pool_pre_ping`: a pooled connection is checked before it is handed out, so
    one the database dropped (a restart, a failover) is replaced instead of
    failing the first statement after the database came back."""
    engine = create_engine(url, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":
        _begin_immediate(engine)
    return engine


def create_schema(engine: Engine) -> None:
    """The SQLite folder, the tables and their indexes, when missing."""
    database = engine.url.database
    if engine.dialect.name == "sqlite" and database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    Base.metadata.create_all(engine)
    # create_all skips tables that exist: a database made before an index was
    # added gets it here.
    for table in Base.metadata.sorted_tables:
        for index in table.indexes:
            index.create(engine, checkfirst=True)


def open_engine(url: str) -> Engine:
    """An engine for `url`, with its schema created when missing."""
    engine = make_engine(url)
    create_schema(engine)
    return engine


def _begin_immediate(engine: Engine) -> None:
    """SQLAlchemy's recipe for SQLite: the driver stops opening transactions by
    itself, and each one starts with BEGIN IMMEDIATE. A deferred transaction
    that reads and then writes fails at once with "database is locked" when
    another holds the write lock; an immediate one waits for it."""

    @event.listens_for(engine, "connect")
    def _no_driver_transactions(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")
