"""`models.trained` in: decode, register, and dead-letter what can never be registered.

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
from google.protobuf.message import DecodeError

from driftloop_registry.domain import InvalidRequestError, RegistryError
from driftloop_registry.handlers import Registry


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
        except InvalidDigestError as error:
            raise PoisonMessage(
                str(error), field="artifact.sha256", rule="format", event_id=event_id
            ) from error
        except UnsafeArtifactError as error:
            raise PoisonMessage(
                f"artifact {trained.artifact.sha256}: {error}",
                field="artifact.sha256",
                rule="regular_file",
                event_id=event_id,
            ) from error
        except ArtifactTooLargeError as error:
            raise PoisonMessage(
                str(error), field="artifact.size_bytes", rule="size", event_id=event_id
            ) from error
        except ArtifactDigestError as error:
            raise PoisonMessage(
                str(error), field="artifact.sha256", rule="digest", event_id=event_id
            ) from error
        except FileNotFoundError as error:
            raise PoisonMessage(
                f"artifact {trained.artifact.sha256} not found in the artifact store",
                field="artifact.uri",
                rule="missing",
                event_id=event_id,
            ) from error
        except RegistryError as error:
            raise PoisonMessage(
                str(error), field="artifact", rule="invalid", event_id=event_id
            ) from error
