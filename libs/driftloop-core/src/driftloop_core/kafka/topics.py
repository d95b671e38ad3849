"""The topics of DESIGN.md, the event type each carries, and their creation.

Topics are created before any service subscribes, with the partition count from
settings: the embedded broker auto-creates unknown topics with its own count,
and a Faust table whose changelog disagrees with its source crashes its agent.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import structlog
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from driftloop_core.settings import KafkaSettings

log = structlog.get_logger(__name__)


class Topics:
    RAW = "events.raw"
    VALID = "events.valid"
    DEADLETTER = "events.deadletter"
    PREDICTIONS = "predictions"
    DRIFT_DETECTED = "drift.detected"
    TRAINING_REQUESTED = "training.requested"
    TRAINING_FAILED = "training.failed"
    MODELS_TRAINED = "models.trained"
    MODELS_REGISTERED = "models.registered"
    MODELS_PROMOTED = "models.promoted"
    # A candidate's rollout: started by the registry, judged by drift, ended by the registry.
    MODELS_ROLLOUTS = "models.rollouts"
    # Point-in-time feature rows and labels, written by the feature store's
    # online side and turned into the offline Parquet log by its sink.
    FEATURES_OFFLINE = "features.offline"

    @classmethod
    def all(cls) -> tuple[str, ...]:
        return tuple(
            value for key, value in vars(cls).items() if key.isupper() and isinstance(value, str)
        )


@dataclass(frozen=True)
class EventKind:
    """Where a protobuf event goes and the CloudEvents type that names it."""

    message: str  # protobuf full name
    topic: str
    ce_type: str


EVENT_KINDS: tuple[EventKind, ...] = (
    EventKind("driftloop.v1.Observation", Topics.VALID, "driftloop.event.observed.v1"),
    EventKind("driftloop.v1.Label", Topics.VALID, "driftloop.event.labelled.v1"),
    EventKind("driftloop.v1.DeadLetter", Topics.DEADLETTER, "driftloop.deadletter.v1"),
    EventKind("driftloop.v1.Prediction", Topics.PREDICTIONS, "driftloop.prediction.made.v1"),
    EventKind("driftloop.v1.DriftDetected", Topics.DRIFT_DETECTED, "driftloop.drift.detected.v1"),
    EventKind(
        "driftloop.v1.TrainingRequested",
        Topics.TRAINING_REQUESTED,
        "driftloop.training.requested.v1",
    ),
    EventKind(
        "driftloop.v1.TrainingFailed", Topics.TRAINING_FAILED, "driftloop.training.failed.v1"
    ),
    EventKind("driftloop.v1.ModelTrained", Topics.MODELS_TRAINED, "driftloop.model.trained.v1"),
    EventKind(
        "driftloop.v1.ModelRegistered", Topics.MODELS_REGISTERED, "driftloop.model.registered.v1"
    ),
    EventKind("driftloop.v1.TrainingRow", Topics.FEATURES_OFFLINE, "driftloop.features.row.v1"),
    EventKind("driftloop.v1.ModelPromoted", Topics.MODELS_PROMOTED, "driftloop.model.promoted.v1"),
    EventKind(
        "driftloop.v1.ModelRolloutStarted",
        Topics.MODELS_ROLLOUTS,
        "driftloop.model.rollout.started.v1",
    ),
    EventKind(
        "driftloop.v1.RolloutJudged", Topics.MODELS_ROLLOUTS, "driftloop.model.rollout.judged.v1"
    ),
    EventKind(
        "driftloop.v1.ModelRolloutEnded", Topics.MODELS_ROLLOUTS, "driftloop.model.rollout.ended.v1"
    ),
)
_BY_MESSAGE = {kind.message: kind for kind in EVENT_KINDS}
_BY_TYPE = {kind.ce_type: kind for kind in EVENT_KINDS}


def kind_of_message(full_name: str) -> EventKind:
    try:
        return _BY_MESSAGE[full_name]
    except KeyError:
        raise KeyError(f"{full_name} is not a Driftloop event message") from None


def kind_of_type(ce_type: str) -> EventKind | None:
    return _BY_TYPE.get(ce_type)


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int = 1
    config: tuple[tuple[str, str], ...] = ()


def default_topic_specs(settings: KafkaSettings) -> list[TopicSpec]:
    return [
        TopicSpec(name, settings.partitions, settings.replication_factor) for name in Topics.all()
    ]


async def ensure_topics(settings: KafkaSettings, specs: Iterable[TopicSpec]) -> list[str]:
    """Create each topic that does not exist yet; return the names created.

    Idempotent: topics that exist are left alone, but a partition count that
    differs from the one asked for is an error, since co-partitioned consumers
    (Faust tables) would silently read the wrong keys.
    """
    wanted = {spec.name: spec for spec in specs}
    admin = AIOKafkaAdminClient(**settings.client_options(), client_id="driftloop-admin")
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [spec for name, spec in wanted.items() if name not in existing]
        created: list[str] = []
        if missing:
            response = await admin.create_topics(
                [
                    NewTopic(
                        spec.name,
                        spec.partitions,
                        spec.replication_factor,
                        topic_configs=dict(spec.config),
                    )
                    for spec in missing
                ]
            )
            for name, code, message in _topic_errors(response):
                if code == 0:
                    created.append(name)
                elif code != TopicAlreadyExistsError.errno:
                    raise RuntimeError(f"cannot create topic {name}: error {code} {message}")
        present = [name for name in wanted if name in existing]
        if present:
            for described in await admin.describe_topics(present):
                name = described["topic"]
                count = len(described["partitions"])
                if count != wanted[name].partitions:
                    raise RuntimeError(
                        f"topic {name} has {count} partitions, expected {wanted[name].partitions}"
                    )
        if created:
            log.info("topics_created", topics=created)
        return created
    finally:
        await admin.close()


def _topic_errors(response: object) -> list[tuple[str, int, str | None]]:
    rows = getattr(response, "topic_errors", [])
    result: list[tuple[str, int, str | None]] = []
    for row in rows:
        name, code = row[0], row[1]
        message = row[2] if len(row) > 2 else None
        result.append((name, code, message))
    return result
