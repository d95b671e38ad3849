"""`models.trained` in: decode, register, and dead-letter what can never be registered.

Runs inside the core `ConsumerLoop`, which commits offsets only after this handler
returned or the record was dead-lettered. A record that does not decode, names
no model or request, or whose artifact is missing, corrupt (digest mismatch),
larger than `DRIFTLOOP_ARTIFACTS_MAX_BYTES` or not ONNX raises `PoisonMessage`:
it goes to the dead-letter topic with the reason, and nothing is registered.
"""

from __future__ import annotations

from driftloop.v1 import events_pb2
from driftloop_core.artifacts import ArtifactDigestError, ArtifactTooLargeError
from driftloop_core.kafka import PoisonMessage, Record
from google.protobuf.message import DecodeError

from driftloop_registry.domain import RegistryError
from driftloop_registry.handlers import Registry


class TrainedHandler:
    """The `ConsumerLoop` handler for `models.trained`."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    async def __call__(self, record: Record) -> None:
        try:
            trained = events_pb2.ModelTrained.FromString(record.value)
        except DecodeError as error:
            raise PoisonMessage(
                f"value is not a ModelTrained: {error}", rule="decode", event_id=record.headers.id
            ) from error
        try:
            await self._registry.register_trained(trained)
        except ArtifactTooLargeError as error:
            raise PoisonMessage(
                str(error), field="artifact.size_bytes", rule="size", event_id=record.headers.id
            ) from error
        except ArtifactDigestError as error:
            raise PoisonMessage(
                str(error), field="artifact.sha256", rule="digest", event_id=record.headers.id
            ) from error
        except FileNotFoundError as error:
            raise PoisonMessage(
                f"artifact {trained.artifact.sha256} not found in the artifact store",
                field="artifact.uri",
                rule="missing",
                event_id=record.headers.id,
            ) from error
        except RegistryError as error:
            raise PoisonMessage(
                str(error), field="artifact", rule="invalid", event_id=record.headers.id
            ) from error
