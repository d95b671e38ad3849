"""The registry's use cases, shared by the Kafka consumer, gRPC and tests.

Nothing here imports grpc, aiokafka or SQLAlchemy: the store, the event
publisher and the artifact reader are the ports of `ports.py` (the SQL store,
the core `Publisher`, the core `ArtifactStore`), and what they hand back are the
domain records. Store calls are synchronous, run in a
worker thread so the event loop keeps serving; writes are serialised by one
lock so version numbers and the alias never race inside a process.

Events are published after the commit that caused them and then marked as
published. A replayed `ModelTrained` whose version exists registers nothing and
publishes nothing new; events a crash left unpublished go out on the next start
(or replay) under the CloudEvents id chosen at commit time, so consumers that
deduplicate by id see each event once.
"""

from __future__ import annotations

import asyncio

import onnx
import structlog
from driftloop.v1 import common_pb2, events_pb2, registry_pb2
from driftloop_core.artifacts import ArtifactStream
from google.protobuf.message import DecodeError

from driftloop_registry import messages
from driftloop_registry.domain import (
    CHAMPION,
    AliasChange,
    GatePolicy,
    InvalidRequestError,
    ModelStats,
    ModelVersion,
    NotFoundError,
    Registration,
    RegistryError,
    Rollout,
    RolloutEnd,
    RolloutPolicy,
)
from driftloop_registry.metrics import (
    CHAMPION_VERSION,
    PROMOTIONS,
    ROLLOUT_OPEN,
    ROLLOUTS,
    VERSIONS,
)
from driftloop_registry.ports import ArtifactReader, EventPublisher, RegistryStore
from driftloop_registry.validation import check_name, check_trained

log = structlog.get_logger(__name__)


class InvalidArtifactError(RegistryError):
    """The artifact's bytes are not what the event claims (size, format)."""


class Registry:
    def __init__(
        self,
        store: RegistryStore,
        artifacts: ArtifactReader,
        events: EventPublisher,
        policy: GatePolicy,
        rollout: RolloutPolicy | None = None,
    ) -> None:
        self._store = store
        self._artifacts = artifacts
        self._events = events
        self._policy = policy
        # None: the gate moves the alias itself; else it starts rollouts.
        self._rollout = rollout
        self._lock = asyncio.Lock()

    # ------------------------------------------------------------------ writes

    async def register_trained(self, trained: events_pb2.ModelTrained) -> Registration:
        """Register a trained model once per (model, request_id), after checking
        its fields (before any lookup or read) and its artifact; raises
        InvalidRequestError / ArtifactDigestError / ArtifactTooLargeError /
        UnsafeArtifactError / InvalidArtifactError when it must not be registered."""
        check_trained(trained)
        existing = await asyncio.to_thread(
            self._store.find_by_request, trained.model, trained.request_id
        )
        if existing is not None:
            log.info(
                "model_trained_replayed",
                model=trained.model,
                request_id=trained.request_id,
                version=existing.version,
            )
            await self.flush_outbox()
            return Registration(existing, None, created=False)
        data = await asyncio.to_thread(self._artifacts.get, trained.artifact)
        self._check_artifact(trained, data)
        async with self._lock:
            registration = await asyncio.to_thread(
                self._store.register, trained, self._policy, self._rollout
            )
        registered = registration.version
        log.info(
            "model_version_registered",
            model=registered.model,
            version=registered.version,
            status=registered.status,
            reason=registered.status_reason,
            request_id=registered.request_id,
            created=registration.created,
        )
        if registration.created:
            await self._publish_registered(registered)
            if registration.superseded is not None:
                await self._publish_rollout_ended(registration.superseded)
            if registration.rollout is not None:
                log.info(
                    "rollout_started",
                    model=registered.model,
                    candidate=registered.version,
                    champion=registration.rollout.champion_version,
                    rollout_id=registration.rollout.rollout_id,
                )
                await self._publish_rollout_started(registration.rollout)
            if registration.change is not None:
                await self._publish_promoted(registration.change, registered)
        return registration

    async def judged(self, verdict: events_pb2.RolloutJudged) -> RolloutEnd | None:
        """Apply a rollout's live verdict: promote or reject its candidate and
        end the rollout. A verdict for a rollout already ended changes nothing."""
        if not verdict.rollout_id:
            raise InvalidRequestError(
                "rollout_id: must not be empty", field="rollout_id", rule="required"
            )
        if verdict.verdict == events_pb2.ROLLOUT_VERDICT_UNSPECIFIED:
            raise InvalidRequestError(
                "verdict: must be PROMOTE or REJECT", field="verdict", rule="enum"
            )
        promote = verdict.verdict == events_pb2.ROLLOUT_VERDICT_PROMOTE
        async with self._lock:
            end = await asyncio.to_thread(
                self._store.judge,
                verdict.rollout_id,
                promote=promote,
                reason=verdict.reason,
                figures=messages.figures_of(verdict.figures),
            )
        if end is None:
            log.info("rollout_verdict_ignored", rollout_id=verdict.rollout_id, why="not open")
            return None
        rollout = end.rollout
        log.info(
            "rollout_ended",
            model=rollout.model,
            candidate=rollout.candidate_version,
            stage=rollout.stage,
            reason=rollout.end_reason,
        )
        if end.change is not None:
            target = await asyncio.to_thread(self._store.get, rollout.model, end.change.to_version)
            await self._publish_promoted(end.change, target)
        await self._publish_rollout_ended(rollout)
        if end.watch is not None:
            log.info(
                "rollout_watch_started",
                model=rollout.model,
                champion=end.watch.champion_version,
                previous=end.watch.candidate_version,
                rollout_id=end.watch.rollout_id,
            )
            await self._publish_rollout_started(end.watch)
        return end

    async def rollouts(self, model: str = "") -> list[Rollout]:
        check_name("model", model, required=False)
        return await asyncio.to_thread(self._store.rollouts, model)

    async def _publish_rollout_started(self, rollout: Rollout) -> None:
        candidate = await asyncio.to_thread(
            self._store.get, rollout.model, rollout.candidate_version
        )
        event = messages.rollout_started(rollout, candidate)
        await self._events.publish_event(
            event, key=rollout.model, event_id=f"{rollout.rollout_id}-started"
        )
        await asyncio.to_thread(self._store.mark_rollout, rollout.rollout_id, started=True)
        ROLLOUTS.labels(rollout.model, rollout.kind.value, "shadow").inc()
        if rollout.open:
            ROLLOUT_OPEN.labels(
                rollout.model, rollout.kind.value, str(rollout.candidate_version)
            ).set(1)

    async def _publish_rollout_ended(self, rollout: Rollout) -> None:
        event = messages.rollout_ended(rollout)
        await self._events.publish_event(
            event, key=rollout.model, event_id=f"{rollout.rollout_id}-ended"
        )
        await asyncio.to_thread(self._store.mark_rollout, rollout.rollout_id, ended=True)
        ROLLOUTS.labels(rollout.model, rollout.kind.value, rollout.stage.value).inc()
        ROLLOUT_OPEN.labels(rollout.model, rollout.kind.value, str(rollout.candidate_version)).set(
            0
        )

    @staticmethod
    def _check_artifact(trained: events_pb2.ModelTrained, data: bytes) -> None:
        declared = trained.artifact.size_bytes
        if declared and declared != len(data):
            raise InvalidArtifactError(
                f"artifact {trained.artifact.sha256}: size is {len(data)} bytes, "
                f"the event says {declared}"
            )
        try:
            onnx.load_model_from_string(data)
        except DecodeError as error:
            raise InvalidArtifactError(
                f"artifact {trained.artifact.sha256}: not an ONNX model ({error})"
            ) from error

    async def promote(
        self, model: str, version: int, *, actor: str, reason: str
    ) -> tuple[events_pb2.ModelPromoted, registry_pb2.ModelVersion]:
        check_name("model", model)
        if not reason.strip():
            raise InvalidRequestError("reason: must not be empty", field="reason", rule="required")
        async with self._lock:
            change, target = await asyncio.to_thread(
                self._store.promote, model, version, actor=actor, reason=reason
            )
        log.info("model_promoted", model=model, to_version=version, actor=actor, reason=reason)
        event = await self._publish_promoted(change, target)
        return event, messages.model_version(target)

    async def rollback(
        self, model: str, *, actor: str, reason: str
    ) -> tuple[events_pb2.ModelPromoted, registry_pb2.ModelVersion]:
        check_name("model", model)
        if not reason.strip():
            raise InvalidRequestError("reason: must not be empty", field="reason", rule="required")
        async with self._lock:
            change, target = await asyncio.to_thread(
                self._store.rollback, model, actor=actor, reason=reason
            )
        log.info(
            "model_rolled_back",
            model=model,
            from_version=change.from_version,
            to_version=change.to_version,
            actor=actor,
            reason=reason,
        )
        event = await self._publish_promoted(change, target)
        return event, messages.model_version(target)

    async def flush_outbox(self) -> int:
        """Publish what was committed but never acknowledged; returns how many."""
        async with self._lock:
            versions, changes = await asyncio.to_thread(self._store.unpublished)
            started, ended = await asyncio.to_thread(self._store.unpublished_rollouts)
        for registered in versions:
            await self._publish_registered(registered)
        for change in changes:
            target = await asyncio.to_thread(self._store.get, change.model, change.to_version)
            await self._publish_promoted(change, target)
        for rollout in started:
            await self._publish_rollout_started(rollout)
        for rollout in ended:
            await self._publish_rollout_ended(rollout)
        total = len(versions) + len(changes) + len(started) + len(ended)
        if total:
            log.info(
                "outbox_flushed",
                registered=len(versions),
                promoted=len(changes),
                rollouts_started=len(started),
                rollouts_ended=len(ended),
            )
        return total

    async def _publish_registered(self, registered: ModelVersion) -> None:
        event = messages.model_registered(registered)
        await self._events.publish_event(
            event, key=registered.model, event_id=registered.registered_event_id
        )
        await asyncio.to_thread(self._store.mark_registered, registered.model, registered.version)
        status = common_pb2.ModelVersionStatus.Name(event.status)
        VERSIONS.labels(
            registered.model, status.removeprefix("MODEL_VERSION_STATUS_").lower()
        ).inc()

    async def _publish_promoted(
        self, change: AliasChange, target: ModelVersion
    ) -> events_pb2.ModelPromoted:
        event = messages.model_promoted(change, target)
        await self._events.publish_event(event, key=change.model, event_id=change.promotion_id)
        await asyncio.to_thread(self._store.mark_promoted, change.promotion_id)
        kind = events_pb2.PromotionKind.Name(event.kind).removeprefix("PROMOTION_KIND_").lower()
        PROMOTIONS.labels(change.model, kind).inc()
        CHAMPION_VERSION.labels(change.model).set(event.to_version)
        return event

    # ------------------------------------------------------------------ reads

    async def list_models(self) -> list[ModelStats]:
        return await asyncio.to_thread(self._store.list_models)

    async def list_versions(self, model: str = "") -> list[registry_pb2.ModelVersion]:
        check_name("model", model, required=False)
        found = await asyncio.to_thread(self._store.list_versions, model)
        return [messages.model_version(version) for version in found]

    async def resolve(self, model: str, version: int | None, alias: str | None) -> ModelVersion:
        """A version by number, or by alias ("champion", the default)."""
        check_name("model", model)
        check_name("alias", alias or "", required=False)
        if version is not None:
            return await asyncio.to_thread(self._store.get, model, version)
        if alias and alias != CHAMPION:
            raise NotFoundError(f"model {model} has no alias {alias!r} (known: champion)")
        return await asyncio.to_thread(self._store.champion, model)

    async def get_version(
        self, model: str, version: int | None = None, alias: str | None = None
    ) -> registry_pb2.ModelVersion:
        return messages.model_version(await self.resolve(model, version, alias))

    async def history(self, model: str, alias: str = CHAMPION) -> list[events_pb2.ModelPromoted]:
        check_name("model", model, required=False)
        check_name("alias", alias, required=False)
        changes = await asyncio.to_thread(self._store.history, model, alias or CHAMPION)
        events = []
        for change in changes:
            target = await asyncio.to_thread(self._store.get, change.model, change.to_version)
            events.append(messages.model_promoted(change, target))
        return events

    async def open_artifact(
        self, model: str, version: int | None = None, alias: str | None = None
    ) -> tuple[ModelVersion, ArtifactStream]:
        """The version and a stream of its artifact, verified as it is read (the
        digest once the last chunk is read: the caller ends with DATA_LOSS then).
        Close the stream."""
        found = await self.resolve(model, version, alias)
        stream = await asyncio.to_thread(self._artifacts.open, found.sha256)
        if stream.size != found.size_bytes:
            stream.close()
            raise InvalidArtifactError(
                f"artifact {found.sha256}: stored size {stream.size} differs from "
                f"recorded {found.size_bytes}"
            )
        return found, stream
