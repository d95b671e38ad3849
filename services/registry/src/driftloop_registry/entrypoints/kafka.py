"""`models.trained` in: decode, register, and dead-letter what can never be registered.
`models.rollouts` in: apply drift's verdicts (`RolloutJudged`); the registry's own
started and ended events on that topic are passed over.

Runs inside the core `ConsumerLoop`, which commits offsets only after this handler
returned or the record was dead-lettered. A record is checked like a request
(`validation.check_trained`) before anything is looked up or read: one that
does not decode, names no model or request, carries an id too long or a digest
that is not a sha256 raises `PoisonMessage` naming the field and the rule. So
does one whose artifact is missing, not a regular file of the store, corrupt
(digest mismatch), larger than `DRIFTLOOP_ARTIFACTS_MAX_BYTES` or not ONNX: it
goes to the dead-letter topic with the reason, nothing is registered, and the
partition moves on.
"""

from __future__ import annotations

from driftloop.v1 import events_pb2
from driftloop_core.artifacts import (
    ArtifactDigestError,
    ArtifactTooLargeError,
    InvalidDigestError,
    UnsafeArtifactError,
)
from driftloop_core.kafka import PoisonMessage, Record
from driftloop_core.kafka.topics import kind_of_message
from google.protobuf.message import DecodeError

from driftloop_registry.domain import InvalidRequestError, RegistryError
from driftloop_registry.handlers import Registry

# What each artifact error says about a ModelTrained: the field and the rule.
_ARTIFACT_PROBLEMS: tuple[tuple[type[Exception], str, str], ...] = (
    (InvalidDigestError, "artifact.sha256", "format"),
    (UnsafeArtifactError, "artifact.sha256", "regular_file"),
    (ArtifactTooLargeError, "artifact.size_bytes", "size"),
    (ArtifactDigestError, "artifact.sha256", "digest"),
    (FileNotFoundError, "artifact.uri", "missing"),
)
_ARTIFACT_ERRORS = tuple(kind for kind, _, _ in _ARTIFACT_PROBLEMS)


def _artifact_problem(error: Exception) -> tuple[str, str]:
    return next((f, r) for kind, f, r in _ARTIFACT_PROBLEMS if isinstance(error, kind))


class TrainedHandler:
    """The `ConsumerLoop` handler for `models.trained`."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    async def __call__(self, record: Record) -> None:
        event_id = record.headers.id
        try:
            trained = events_pb2.ModelTrained.FromString(record.value)
        except DecodeError as error:
            raise PoisonMessage(
                f"value is not a ModelTrained: {error}", rule="decode", event_id=event_id
            ) from error
        try:
            await self._registry.register_trained(trained)
        except InvalidRequestError as error:
            raise PoisonMessage(
                str(error), field=error.field, rule=error.rule or "invalid", event_id=event_id
            ) from error
        except _ARTIFACT_ERRORS as error:
            field, rule = _artifact_problem(error)
            reason = str(error)
            if isinstance(error, UnsafeArtifactError):
                reason = f"artifact {trained.artifact.sha256}: {error}"
            elif isinstance(error, FileNotFoundError):
                reason = f"artifact {trained.artifact.sha256} not found in the artifact store"
            raise PoisonMessage(reason, field=field, rule=rule, event_id=event_id) from error
        except RegistryError as error:
            raise PoisonMessage(
                str(error), field="artifact", rule="invalid", event_id=event_id
            ) from error


JUDGED = kind_of_message("driftloop.v1.RolloutJudged").ce_type
TRAINED = kind_of_message("driftloop.v1.ModelTrained").ce_type


class JudgedHandler:
    """The handler for drift's `RolloutJudged` verdicts."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    async def __call__(self, record: Record) -> None:
        event_id = record.headers.id
        try:
            verdict = events_pb2.RolloutJudged.FromString(record.value)
        except DecodeError as error:
            raise PoisonMessage(
                f"value is not a RolloutJudged: {error}", rule="decode", event_id=event_id
            ) from error
        try:
            await self._registry.judged(verdict)
        except InvalidRequestError as error:
            raise PoisonMessage(
                str(error), field=error.field, rule=error.rule or "invalid", event_id=event_id
            ) from error


class RegistryHandler:
    """`models.trained` and `models.rollouts` through one consumer: by the
    record's topic and CloudEvents type."""

    def __init__(self, registry: Registry, rollouts_topic: str) -> None:
        self._trained = TrainedHandler(registry)
        self._judged = JudgedHandler(registry)
        self._rollouts_topic = rollouts_topic

    async def __call__(self, record: Record) -> None:
        if record.topic != self._rollouts_topic:
            await self._trained(record)
        elif record.headers.type == JUDGED:
            await self._judged(record)
        # ModelRolloutStarted / Ended: the registry's own; nothing to do.
