"""Model versions and alias history in SQL, through SQLAlchemy 2.x.

Only portable column types are used (JSON, LargeBinary, timezone-aware
DateTime, BigInteger), so the embedded SQLite file and a PostgreSQL URL behave
the same. Every state change commits in one transaction, and the events it
implies are kept beside it as "not yet published" (an outbox): the caller
publishes after the commit and marks them, and whatever a crash left unpublished
is published again on start, under the same CloudEvents ids.

Writers may race (the consumer and gRPC Promote run in threads; replicas may
share one PostgreSQL database). The database itself keeps the invariants, one
row per (model, version) and at most one champion per model, through unique
indexes; a transaction that loses a race fails on them and is run again on what
the winner committed. SQLite write transactions take the write lock up front
(BEGIN IMMEDIATE), so they queue instead of failing to upgrade a read lock.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, cast

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
    func,
    select,
    text,
    update,
)
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from driftloop_registry.domain import (
    CHAMPION,
    GATE_ACTOR,
    AliasChange,
    GatePolicy,
    Kind,
    NotFoundError,
    PreconditionError,
    Status,
    decide_promotion,
    next_rollback_target,
)

T = TypeVar("T")
# Attempts at a write transaction that keeps losing races; each loss means
# another writer committed, so this only runs out under absurd contention.
WRITE_ATTEMPTS = 32
_ONE_CHAMPION = text("status = 'champion'")


class _LostRace(Exception):
    """Another writer committed a change this transaction's reads missed."""


class Base(DeclarativeBase):
    pass


def _utc(value: datetime | None) -> datetime | None:
    """SQLite hands timezone-aware columns back naive; they were stored as UTC."""
    if value is None:
        return None
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

    @property
    def created(self) -> datetime:
        created = _utc(self.created_at)
        assert created is not None
        return created


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

    def change(self) -> AliasChange:
        at = _utc(self.at)
        assert at is not None
        return AliasChange(
            promotion_id=self.promotion_id,
            model=self.model,
            alias=self.alias,
            from_version=self.from_version,
            to_version=self.to_version,
            actor=self.actor,
            reason=self.reason,
            kind=Kind(self.kind),
            at=at,
        )


@dataclass(frozen=True)
class Registration:
    """The outcome of registering a ModelTrained: the version, and the alias change
    the gate made (None when it stayed a candidate). `created` is False on replay."""

    version: VersionRow
    change: AliasChange | None
    created: bool


@dataclass(frozen=True)
class ModelStats:
    model: str
    latest_version: int
    champion_version: int | None
    version_count: int
    updated_at: datetime


def open_engine(url: str) -> Engine:
    """An engine for `url`, creating the SQLite folder, the tables and their
    indexes when missing."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url)
    if engine.dialect.name == "sqlite":
        _begin_immediate(engine)
    Base.metadata.create_all(engine)
    # create_all skips tables that exist: a database made before an index was
    # added gets it here.
    for table in Base.metadata.sorted_tables:
        for index in table.indexes:
            index.create(engine, checkfirst=True)
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


def _now() -> datetime:
    return datetime.now(UTC)


def _window(trained: events_pb2.ModelTrained) -> tuple[datetime | None, datetime | None]:
    span = trained.dataset.time_range
    start = span.start.ToDatetime(UTC) if span.HasField("start") else None
    end = span.end.ToDatetime(UTC) if span.HasField("end") else None
    return start, end


class RegistryStore:
    """Synchronous data access; callers on an event loop run it in a thread."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    def close(self) -> None:
        self._engine.dispose()

    @contextmanager
    def _session(self) -> Iterator[Session]:
        with self._sessions() as session, session.begin():
            yield session

    def _write(self, work: Callable[[Session], T]) -> T:
        """`work` in one transaction, run again while it loses a race on a
        unique index to a writer that committed first."""
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            try:
                with self._session() as session:
                    return work(session)
            except (IntegrityError, _LostRace):
                if attempt == WRITE_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ reads

    def find_by_request(self, model: str, request_id: str) -> VersionRow | None:
        with self._sessions() as session:
            return session.scalar(
                select(VersionRow).where(
                    VersionRow.model == model, VersionRow.request_id == request_id
                )
            )

    def get(self, model: str, version: int) -> VersionRow:
        with self._sessions() as session:
            row = session.scalar(
                select(VersionRow).where(VersionRow.model == model, VersionRow.version == version)
            )
        if row is None:
            raise NotFoundError(f"model {model} has no version {version}")
        return row

    def champion(self, model: str) -> VersionRow:
        with self._sessions() as session:
            row = self._champion(session, model)
            if row is None:
                known = session.scalar(select(func.count()).where(VersionRow.model == model))
        if row is None:
            if not known:
                raise NotFoundError(f"model {model} has no versions")
            raise NotFoundError(f"model {model} has no champion")
        return row

    def list_versions(self, model: str = "") -> list[VersionRow]:
        query = select(VersionRow).order_by(VersionRow.model, VersionRow.version)
        if model:
            query = query.where(VersionRow.model == model)
        with self._sessions() as session:
            return list(session.scalars(query))

    def list_models(self) -> list[ModelStats]:
        stats: dict[str, ModelStats] = {}
        with self._sessions() as session:
            # Only the columns needed: the rows also hold whole ModelTrained blobs.
            columns = select(
                VersionRow.model, VersionRow.version, VersionRow.status, VersionRow.created_at
            ).order_by(VersionRow.model)
            for model, version, status, created_at in session.execute(columns):
                created = _utc(created_at)
                assert created is not None
                seen = stats.get(model)
                champion = version if status == Status.CHAMPION else None
                if seen is None:
                    stats[model] = ModelStats(model, version, champion, 1, created)
                    continue
                stats[model] = ModelStats(
                    model,
                    max(seen.latest_version, version),
                    champion if champion is not None else seen.champion_version,
                    seen.version_count + 1,
                    max(seen.updated_at, created),
                )
            for change in session.scalars(select(AliasRow)):
                seen = stats.get(change.model)
                at = _utc(change.at)
                if seen is not None and at is not None and at > seen.updated_at:
                    stats[change.model] = ModelStats(
                        seen.model,
                        seen.latest_version,
                        seen.champion_version,
                        seen.version_count,
                        at,
                    )
        return [stats[name] for name in sorted(stats)]

    def history(self, model: str, alias: str = CHAMPION) -> list[AliasChange]:
        with self._sessions() as session:
            rows = session.scalars(
                select(AliasRow)
                .where(AliasRow.model == model, AliasRow.alias == alias)
                .order_by(AliasRow.id)
            )
            return [row.change() for row in rows]

    # ------------------------------------------------------------------ writes

    def register(self, trained: events_pb2.ModelTrained, policy: GatePolicy) -> Registration:
        """Record a trained model as the next version, once per request id, and let
        the gate decide whether it takes the champion alias."""
        return self._write(lambda session: self._register(session, trained, policy))

    def _register(
        self, session: Session, trained: events_pb2.ModelTrained, policy: GatePolicy
    ) -> Registration:
        model = trained.model
        existing = session.scalar(
            select(VersionRow).where(
                VersionRow.model == model, VersionRow.request_id == trained.request_id
            )
        )
        if existing is not None:
            return Registration(existing, None, created=False)
        latest = session.scalar(
            select(func.max(VersionRow.version)).where(VersionRow.model == model)
        )
        champion = self._champion(session, model)
        measured = trained.champion_version if trained.HasField("champion_version") else None
        decision = decide_promotion(
            policy,
            metrics=dict(trained.metrics),
            champion_metrics=dict(trained.champion_metrics),
            measured_champion=measured,
            current_champion=champion.version if champion else None,
        )
        now = _now()
        start, end = _window(trained)
        row = VersionRow(
            model=model,
            version=(latest or 0) + 1,
            # `_move` makes it champion once the current one stepped down.
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
            champion_version=measured,
            dataset_uri=trained.dataset.uri,
            dataset_digest=trained.dataset.sha256,
            dataset_rows=trained.dataset.row_count,
            window_start=start,
            window_end=end,
            params=dict(trained.params),
            code_version=trained.code_version,
            parent_version=measured
            if measured is not None
            else (champion.version if champion else None),
            request_id=trained.request_id,
            algorithm=trained.algorithm,
            eval_rows=trained.eval_rows,
            feature_names=list(trained.feature_names),
            trained_event=trained.SerializeToString(),
            created_at=now,
            registered_event_id=uuid.uuid4().hex,
            registered_published=False,
        )
        session.add(row)
        change = None
        if decision.promote:
            change = self._move(
                session,
                model,
                champion,
                row,
                actor=GATE_ACTOR,
                reason=decision.reason,
                kind=Kind.PROMOTE,
                at=now,
            )
        return Registration(row, change, created=True)

    def promote(
        self, model: str, version: int, *, actor: str, reason: str
    ) -> tuple[AliasChange, VersionRow]:
        return self._write(
            lambda session: self._promote(session, model, version, actor=actor, reason=reason)
        )

    def _promote(
        self, session: Session, model: str, version: int, *, actor: str, reason: str
    ) -> tuple[AliasChange, VersionRow]:
        target = session.scalar(
            select(VersionRow).where(VersionRow.model == model, VersionRow.version == version)
        )
        if target is None:
            raise NotFoundError(f"model {model} has no version {version}")
        champion = self._champion(session, model)
        if champion is not None and champion.version == version:
            raise PreconditionError(f"model {model} version {version} is already the champion")
        target.status_reason = f"promoted by {actor}: {reason}"
        change = self._move(
            session,
            model,
            champion,
            target,
            actor=actor,
            reason=reason,
            kind=Kind.PROMOTE,
            at=_now(),
        )
        return change, target

    def rollback(self, model: str, *, actor: str, reason: str) -> tuple[AliasChange, VersionRow]:
        return self._write(
            lambda session: self._rollback(session, model, actor=actor, reason=reason)
        )

    def _rollback(
        self, session: Session, model: str, *, actor: str, reason: str
    ) -> tuple[AliasChange, VersionRow]:
        champion = self._champion(session, model)
        if champion is None:
            raise NotFoundError(f"model {model} has no champion to roll back")
        rows = session.scalars(
            select(AliasRow)
            .where(AliasRow.model == model, AliasRow.alias == CHAMPION)
            .order_by(AliasRow.id)
        )
        target_version = next_rollback_target(
            [(Kind(r.kind), r.from_version, r.to_version) for r in rows]
        )
        if target_version is None:
            raise PreconditionError(
                f"model {model} has no previous champion to roll back to "
                f"(v{champion.version} is the first)"
            )
        target = session.scalar(
            select(VersionRow).where(
                VersionRow.model == model, VersionRow.version == target_version
            )
        )
        assert target is not None
        target.status_reason = f"restored by rollback ({actor}): {reason}"
        change = self._move(
            session,
            model,
            champion,
            target,
            actor=actor,
            reason=reason,
            kind=Kind.ROLLBACK,
            at=_now(),
        )
        return change, target

    def _move(
        self,
        session: Session,
        model: str,
        champion: VersionRow | None,
        target: VersionRow,
        *,
        actor: str,
        reason: str,
        kind: Kind,
        at: datetime,
    ) -> AliasChange:
        if champion is not None:
            # Only if it still is the champion: a writer that moved the alias since
            # we read it wins, and this transaction runs again on its result.
            stepped_down = session.execute(
                update(VersionRow)
                .where(VersionRow.id == champion.id, VersionRow.status == Status.CHAMPION.value)
                .values(
                    status=Status.ARCHIVED.value,
                    status_reason=f"replaced by v{target.version} ({kind.value}): {reason}",
                )
            )
            if cast(CursorResult[Any], stepped_down).rowcount != 1:
                raise _LostRace(f"model {model}: the champion moved meanwhile")
        # An UPDATE even when the target was loaded as champion: that may be
        # stale (it was champion when read, and has been replaced since).
        session.flush()  # a new version gets its id
        crowned = session.execute(
            update(VersionRow)
            .where(VersionRow.id == target.id)
            .values(status=Status.CHAMPION.value)
        )
        if cast(CursorResult[Any], crowned).rowcount != 1:
            raise AssertionError(f"model {model} version {target.version} vanished")
        row = AliasRow(
            promotion_id=uuid.uuid4().hex,
            model=model,
            alias=CHAMPION,
            from_version=champion.version if champion else None,
            to_version=target.version,
            actor=actor,
            reason=reason,
            kind=kind.value,
            at=at,
            published=False,
        )
        session.add(row)
        return row.change()

    @staticmethod
    def _champion(session: Session, model: str) -> VersionRow | None:
        return session.scalar(
            select(VersionRow).where(
                VersionRow.model == model, VersionRow.status == Status.CHAMPION.value
            )
        )

    # ------------------------------------------------------------------ outbox

    def unpublished(self) -> tuple[list[VersionRow], list[AliasChange]]:
        """Events committed but not yet acknowledged by the broker, oldest first."""
        with self._sessions() as session:
            versions = list(
                session.scalars(
                    select(VersionRow)
                    .where(VersionRow.registered_published.is_(False))
                    .order_by(VersionRow.id)
                )
            )
            changes = [
                row.change()
                for row in session.scalars(
                    select(AliasRow).where(AliasRow.published.is_(False)).order_by(AliasRow.id)
                )
            ]
        return versions, changes

    def mark_registered(self, model: str, version: int) -> None:
        with self._session() as session:
            row = session.scalar(
                select(VersionRow).where(VersionRow.model == model, VersionRow.version == version)
            )
            if row is not None:
                row.registered_published = True

    def mark_promoted(self, promotion_id: str) -> None:
        with self._session() as session:
            row = session.scalar(select(AliasRow).where(AliasRow.promotion_id == promotion_id))
            if row is not None:
                row.published = True
