"""Model versions and alias history in SQL, through SQLAlchemy 2.x: the
`RegistryStore` port (`ports.py`) over the tables of `schema.py`.

Every state change commits in one transaction, and the events it implies are
kept beside it as "not yet published" (an outbox): the caller publishes after
the commit and marks them, and whatever a crash left unpublished is published
again on start, under the same CloudEvents ids.

Writers may race (the consumer and gRPC Promote run in threads; replicas may
share one PostgreSQL database). The database itself keeps the invariants, one
row per (model, version) and at most one champion per model, through unique
indexes; a transaction that loses a race fails on them and is run again on what
the winner committed. SQLite write transactions take the write lock up front
(BEGIN IMMEDIATE), so they queue instead of failing to upgrade a read lock.

A database that cannot be reached raises SQLAlchemy's OperationalError; the
consumer retries it as transient, and the engine's pre-ping replaces the pooled
connections the outage broke.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

from driftloop.v1 import events_pb2
from sqlalchemy import Engine, func, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from driftloop_registry.adapters.schema import (
    AliasRow,
    RolloutRow,
    VersionRow,
    as_utc,
    change_of,
    new_version_row,
    rollout_of,
    version_of,
)
from driftloop_registry.domain import (
    CHAMPION,
    GATE_ACTOR,
    ROLLOUT_ACTOR,
    AliasChange,
    GatePolicy,
    Kind,
    ModelStats,
    ModelVersion,
    NotFoundError,
    PreconditionError,
    Registration,
    Rollout,
    RolloutEnd,
    RolloutKind,
    RolloutPolicy,
    Stage,
    Status,
    decide_promotion,
    next_rollback_target,
)

T = TypeVar("T")
# Attempts at a write transaction that keeps losing races; each loss means
# another writer committed, so this only runs out under absurd contention.
WRITE_ATTEMPTS = 32


class _LostRace(Exception):
    """Another writer committed a change this transaction's reads missed."""


def _now() -> datetime:
    return datetime.now(UTC)


class SqlRegistryStore:
    """Synchronous data access; callers on an event loop run it in a thread."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @property
    def engine(self) -> Engine:
        return self._engine

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

    # Reads.

    def find_by_request(self, model: str, request_id: str) -> ModelVersion | None:
        with self._sessions() as session:
            row = session.scalar(
                select(VersionRow).where(
                    VersionRow.model == model, VersionRow.request_id == request_id
                )
            )
            return version_of(row) if row is not None else None

    def get(self, model: str, version: int) -> ModelVersion:
        with self._sessions() as session:
            return version_of(self._version(session, model, version))

    def champion(self, model: str) -> ModelVersion:
        with self._sessions() as session:
            row = self._champion(session, model)
            if row is not None:
                return version_of(row)
            known = session.scalar(select(func.count()).where(VersionRow.model == model))
        if not known:
            raise NotFoundError(f"model {model} has no versions")
        raise NotFoundError(f"model {model} has no champion")

    def list_versions(self, model: str = "") -> list[ModelVersion]:
        query = select(VersionRow).order_by(VersionRow.model, VersionRow.version)
        if model:
            query = query.where(VersionRow.model == model)
        with self._sessions() as session:
            return [version_of(row) for row in session.scalars(query)]

    def list_models(self) -> list[ModelStats]:
        stats: dict[str, ModelStats] = {}
        with self._sessions() as session:
            # Only the columns needed: the rows also hold whole ModelTrained blobs.
            columns = select(
                VersionRow.model, VersionRow.version, VersionRow.status, VersionRow.created_at
            ).order_by(VersionRow.model)
            for model, version, status, created_at in session.execute(columns):
                created = as_utc(created_at)
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
            for change in map(change_of, session.scalars(select(AliasRow))):
                seen = stats.get(change.model)
                if seen is not None and change.at > seen.updated_at:
                    stats[change.model] = ModelStats(
                        seen.model,
                        seen.latest_version,
                        seen.champion_version,
                        seen.version_count,
                        change.at,
                    )
        return [stats[name] for name in sorted(stats)]

    def rollouts(self, model: str = "") -> list[Rollout]:
        """Rollouts, newest first; of one model when `model` is given."""
        query = select(RolloutRow).order_by(RolloutRow.id.desc())
        if model:
            query = query.where(RolloutRow.model == model)
        with self._sessions() as session:
            return [rollout_of(row) for row in session.scalars(query)]

    def history(self, model: str, alias: str = CHAMPION) -> list[AliasChange]:
        with self._sessions() as session:
            rows = session.scalars(
                select(AliasRow)
                .where(AliasRow.model == model, AliasRow.alias == alias)
                .order_by(AliasRow.id)
            )
            return [change_of(row) for row in rows]

    # Writes.

    def register(
        self,
        trained: events_pb2.ModelTrained,
        policy: GatePolicy,
        rollout: RolloutPolicy | None = None,
    ) -> Registration:
        """Record a trained model as the next version, once per request id, and let
        the gate decide whether it takes the champion alias; with a `rollout`
        policy, a candidate the gate admits while a champion serves starts a
        rollout instead (ending the model's open one)."""
        return self._write(lambda session: self._register(session, trained, policy, rollout))

    def _register(
        self,
        session: Session,
        trained: events_pb2.ModelTrained,
        policy: GatePolicy,
        rollout: RolloutPolicy | None = None,
    ) -> Registration:
        model = trained.model
        existing = session.scalar(
            select(VersionRow).where(
                VersionRow.model == model, VersionRow.request_id == trained.request_id
            )
        )
        if existing is not None:
            return Registration(version_of(existing), None, created=False)
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
        parent = measured if measured is not None else (champion.version if champion else None)
        now = _now()
        # A candidate: `_move` makes it champion once the current one stepped down.
        row = new_version_row(
            trained,
            (latest or 0) + 1,
            decision,
            measured_champion=measured,
            parent_version=parent,
            at=now,
        )
        session.add(row)
        change = None
        if decision.promote and champion is not None and rollout is not None:
            superseded = self._end_open(
                session,
                model,
                Stage.SUPERSEDED,
                f"superseded by v{row.version}, admitted by the gate",
                at=now,
            )
            trial = RolloutRow(
                rollout_id=uuid.uuid4().hex,
                model=model,
                kind=RolloutKind.TRIAL.value,
                candidate_version=row.version,
                champion_version=champion.version,
                stage=Stage.SHADOW.value,
                gate_reason=decision.reason,
                policy=dataclasses.asdict(rollout),
                started_at=now,
                started_published=False,
                ended_published=False,
            )
            session.add(trial)
            row.status_reason = f"in rollout against v{champion.version}: {decision.reason}"
            return Registration(
                version_of(row),
                None,
                created=True,
                rollout=rollout_of(trial),
                superseded=superseded,
            )
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
        return Registration(version_of(row), change, created=True)

    def promote(
        self, model: str, version: int, *, actor: str, reason: str
    ) -> tuple[AliasChange, ModelVersion]:
        return self._write(
            lambda session: self._promote(session, model, version, actor=actor, reason=reason)
        )

    def _promote(
        self, session: Session, model: str, version: int, *, actor: str, reason: str
    ) -> tuple[AliasChange, ModelVersion]:
        target = self._version(session, model, version)
        champion = self._champion(session, model)
        if champion is not None and champion.version == version:
            raise PreconditionError(f"model {model} version {version} is already the champion")
        target.status_reason = f"promoted by {actor}: {reason}"
        self._end_open(
            session,
            model,
            Stage.SUPERSEDED,
            f"v{version} promoted by {actor} during the rollout: {reason}",
            at=_now(),
        )
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
        return change, version_of(target)

    def rollback(self, model: str, *, actor: str, reason: str) -> tuple[AliasChange, ModelVersion]:
        return self._write(
            lambda session: self._rollback(session, model, actor=actor, reason=reason)
        )

    def _rollback(
        self, session: Session, model: str, *, actor: str, reason: str
    ) -> tuple[AliasChange, ModelVersion]:
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
        target = self._version(session, model, target_version)
        target.status_reason = f"restored by rollback ({actor}): {reason}"
        self._end_open(
            session,
            model,
            Stage.SUPERSEDED,
            f"champion rolled back to v{target_version} by {actor} during the rollout",
            at=_now(),
        )
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
        return change, version_of(target)

    def judge(
        self, rollout_id: str, *, promote: bool, reason: str, figures: dict[str, float]
    ) -> RolloutEnd | None:
        """End an open rollout on its live verdict: promote the candidate (the
        alias moves, actor `rollout`) or reject it. None when the rollout is
        unknown or already ended (a replayed or late verdict changes nothing)."""
        return self._write(
            lambda session: self._judge(
                session, rollout_id, promote=promote, reason=reason, figures=figures
            )
        )

    def _judge(
        self,
        session: Session,
        rollout_id: str,
        *,
        promote: bool,
        reason: str,
        figures: dict[str, float],
    ) -> RolloutEnd | None:
        trial = session.scalar(select(RolloutRow).where(RolloutRow.rollout_id == rollout_id))
        if trial is None or trial.stage != Stage.SHADOW.value:
            return None
        now = _now()
        model = trial.model
        champion = self._champion(session, model)
        trial.ended_at = now
        trial.figures = figures
        trial.ended_published = False
        candidate = self._version(session, model, trial.candidate_version)
        if champion is None or champion.version != trial.champion_version:
            trial.stage = Stage.SUPERSEDED.value
            trial.end_reason = (
                f"the champion is no longer v{trial.champion_version}; verdict not applied: "
                f"{reason}"
            )
            return RolloutEnd(rollout_of(trial), None)
        trial.end_reason = reason
        if trial.kind == RolloutKind.WATCH.value:
            return self._end_watch(session, trial, champion, candidate, promote, reason, now)
        if not promote:
            trial.stage = Stage.REJECTED.value
            candidate.status_reason = f"rejected by its rollout: {reason}"
            return RolloutEnd(rollout_of(trial), None)
        trial.stage = Stage.PROMOTED.value
        candidate.status_reason = f"promoted by its rollout: {reason}"
        change = self._move(
            session,
            model,
            champion,
            candidate,
            actor=ROLLOUT_ACTOR,
            reason=reason,
            kind=Kind.PROMOTE,
            at=now,
        )
        policy = RolloutPolicy(**trial.policy)
        if policy.watch_s <= 0:
            return RolloutEnd(rollout_of(trial), change)
        # The previous champion keeps shadowing the new one for `watch_s`.
        watch = RolloutRow(
            rollout_id=uuid.uuid4().hex,
            model=model,
            kind=RolloutKind.WATCH.value,
            candidate_version=champion.version,
            champion_version=candidate.version,
            stage=Stage.SHADOW.value,
            gate_reason=f"watch after v{candidate.version}'s promotion: {reason}",
            policy=dataclasses.asdict(
                dataclasses.replace(policy, max_duration_s=policy.watch_s, latency_budget_ms=0.0)
            ),
            started_at=now,
            started_published=False,
            ended_published=False,
        )
        session.add(watch)
        return RolloutEnd(rollout_of(trial), change, rollout_of(watch))

    def _end_watch(
        self,
        session: Session,
        watch: RolloutRow,
        champion: VersionRow,
        previous: VersionRow,
        better: bool,
        reason: str,
        now: datetime,
    ) -> RolloutEnd:
        """A watch's verdict: the previous champion did better live (the alias
        goes back to it, a rollback), or not (the new champion stays)."""
        if not better:
            watch.stage = Stage.KEPT.value
            return RolloutEnd(rollout_of(watch), None)
        watch.stage = Stage.ROLLED_BACK.value
        why = f"watch after promotion: {reason}"
        previous.status_reason = f"restored by the watch after v{champion.version}'s promotion"
        change = self._move(
            session,
            watch.model,
            champion,
            previous,
            actor=ROLLOUT_ACTOR,
            reason=why,
            kind=Kind.ROLLBACK,
            at=now,
        )
        return RolloutEnd(rollout_of(watch), change)

    @staticmethod
    def _end_open(
        session: Session, model: str, stage: Stage, reason: str, *, at: datetime
    ) -> Rollout | None:
        """End the model's open rollout, if any, without a verdict."""
        trial = session.scalar(
            select(RolloutRow).where(
                RolloutRow.model == model, RolloutRow.stage == Stage.SHADOW.value
            )
        )
        if trial is None:
            return None
        trial.stage = stage.value
        trial.end_reason = reason
        trial.ended_at = at
        trial.ended_published = False
        return rollout_of(trial)

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
        return change_of(row)

    @staticmethod
    def _version(session: Session, model: str, version: int) -> VersionRow:
        row = session.scalar(
            select(VersionRow).where(VersionRow.model == model, VersionRow.version == version)
        )
        if row is None:
            raise NotFoundError(f"model {model} has no version {version}")
        return row

    @staticmethod
    def _champion(session: Session, model: str) -> VersionRow | None:
        return session.scalar(
            select(VersionRow).where(
                VersionRow.model == model, VersionRow.status == Status.CHAMPION.value
            )
        )

    # The outbox.

    def unpublished(self) -> tuple[list[ModelVersion], list[AliasChange]]:
        """Events committed but not yet acknowledged by the broker, oldest first."""
        with self._sessions() as session:
            versions = [
                version_of(row)
                for row in session.scalars(
                    select(VersionRow)
                    .where(VersionRow.registered_published.is_(False))
                    .order_by(VersionRow.id)
                )
            ]
            changes = [
                change_of(row)
                for row in session.scalars(
                    select(AliasRow).where(AliasRow.published.is_(False)).order_by(AliasRow.id)
                )
            ]
        return versions, changes

    def unpublished_rollouts(self) -> tuple[list[Rollout], list[Rollout]]:
        """Rollouts whose started event, and those whose ended event, were
        committed but not yet acknowledged, oldest first."""
        with self._sessions() as session:
            started = [
                rollout_of(row)
                for row in session.scalars(
                    select(RolloutRow)
                    .where(RolloutRow.started_published.is_(False))
                    .order_by(RolloutRow.id)
                )
            ]
            ended = [
                rollout_of(row)
                for row in session.scalars(
                    select(RolloutRow)
                    .where(RolloutRow.ended_at.is_not(None), RolloutRow.ended_published.is_(False))
                    .order_by(RolloutRow.id)
                )
            ]
        return started, ended

    def mark_rollout(self, rollout_id: str, *, started: bool = False, ended: bool = False) -> None:
        values: dict[str, bool] = {}
        if started:
            values["started_published"] = True
        if ended:
            values["ended_published"] = True
        with self._session() as session:
            session.execute(
                update(RolloutRow).where(RolloutRow.rollout_id == rollout_id).values(**values)
            )

    def mark_registered(self, model: str, version: int) -> None:
        with self._session() as session:
            session.execute(
                update(VersionRow)
                .where(VersionRow.model == model, VersionRow.version == version)
                .values(registered_published=True)
            )

    def mark_promoted(self, promotion_id: str) -> None:
        with self._session() as session:
            session.execute(
                update(AliasRow).where(AliasRow.promotion_id == promotion_id).values(published=True)
            )
