"""Records in, application calls out: the drift service's Kafka side.

One `ConsumerLoop` reads every partition of `predictions`, `events.valid`,
`models.promoted`, `models.registered`, `training.failed` and `models.rollouts`
by assignment, in no consumer group: performance drift needs one model's whole
error stream in one place, so the service is a single instance, and without a
group there is no join delay or rebalance. Its positions are the offsets
stored with its state (`StoredOffsets` over `DriftApplication.load` and
`.store`).

Each record goes to the handler of its CloudEvents type (`HANDLERS`, by
protobuf message; `events.valid` carries observations and late labels, a
label with the header `label_correction: 1` being a correction of the one
before). A prediction an online learner answered counts as the champion's own
answer carried beside it, and is ignored when there was no champion. A
rollout candidate's shadow prediction (`shadow` set) goes to the rollout judge
only, never to the champion's watch. `ModelRolloutStarted` opens a rollout of
drift's model and `ModelRolloutEnded` closes it; `RolloutJudged` (drift's own
verdicts, read back) is not followed. A type drift does not follow is
skipped; a record with no type, or one that does not decode, is a
`PoisonMessage`, which the loop dead-letters with its source position, and
the partition moves on.

Service time is the records' Kafka timestamps (a replay decides as the first
pass did), but whoever writes a topic sets those: a timestamp further ahead of
the wall clock than `max_future_ms` counts as the wall clock plus that much,
so one record from far ahead cannot expire every pending join or end every
cooldown at once. Such records are counted and logged.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from driftloop.v1 import events_pb2
from driftloop_core.kafka import ConsumerLoop, PoisonMessage, Publisher, Record, StoredOffsets
from driftloop_core.kafka.headers import LABEL_CORRECTION_HEADER
from driftloop_core.kafka.topics import kind_of_type
from driftloop_core.logging import get_logger
from driftloop_core.settings import Settings
from driftloop_core.values import from_feature_value
from google.protobuf.message import DecodeError, Message

from driftloop_drift import metrics
from driftloop_drift.application import DriftApplication
from driftloop_drift.config import DriftSettings
from driftloop_drift.domain.join import LabelSeen, PredictionSeen
from driftloop_drift.domain.rollout import Rollout, RolloutKind, RolloutPolicy, ShadowSeen

log = get_logger(__name__)

# The name the loop's metrics and spans carry; the reader itself joins no group.
GROUP_ID = "driftloop-drift"
# The header ingestion sets on a `Label` that corrects the one before.
CORRECTION_HEADER = LABEL_CORRECTION_HEADER

Handler = Callable[[DriftApplication, Record, int], Awaitable[None]]
M = TypeVar("M", bound=Message)


def _decode(cls: type[M], value: bytes) -> M:
    try:
        return cls.FromString(value)
    except DecodeError as error:
        raise PoisonMessage(
            f"value is not a {cls.DESCRIPTOR.full_name}: {error}", rule="decode"
        ) from None


def _ms(stamp: Any, fallback: int) -> int:
    return int(stamp.ToMilliseconds()) if stamp.seconds or stamp.nanos else fallback


def prediction_seen(prediction: events_pb2.Prediction, record_ms: int) -> PredictionSeen | None:
    """The prediction as the engine sees it: features that took a default are left out,
    and integers count as floats.

    Drift watches registered versions only. When an online learner answered
    (`learner` set), the champion's own answer rides along as `champion`: that is
    the version's prediction drift sees. Without one (no version was loaded)
    there is nothing to watch: None."""
    version, label = prediction.model_version, prediction.label
    if prediction.learner:
        if not prediction.HasField("champion") or prediction.champion.model_version <= 0:
            return None
        version, label = prediction.champion.model_version, prediction.champion.label
    defaults = set(prediction.defaults_applied)
    features: dict[str, float | str] = {}
    for name, value in prediction.features.items():
        converted = from_feature_value(value)
        if converted is not None and name not in defaults:
            features[name] = float(converted) if isinstance(converted, int) else converted
    event_ms = _ms(prediction.event_time, _ms(prediction.predicted_at, record_ms))
    return PredictionSeen(
        prediction.event_id,
        prediction.model,
        version,
        label,
        event_ms,
        features,
    )


# ---------------------------------------------------------------------- handlers


def shadow_seen(prediction: events_pb2.Prediction) -> ShadowSeen:
    """A rollout candidate's answer as the judge sees it. One without its rollout
    cannot be judged, nor may it be watched as the champion's: a PoisonMessage."""
    if not prediction.rollout_id:
        raise PoisonMessage(
            "Prediction.rollout_id: required on a shadow prediction",
            field="rollout_id",
            rule="required",
        )
    # `latency` is the candidate's own scoring time; an inference that does not
    # measure it leaves it unset, which is no measurement rather than 0 ms.
    latency_ms = (
        prediction.latency.ToNanoseconds() / 1e6 if prediction.HasField("latency") else None
    )
    return ShadowSeen(
        prediction.rollout_id,
        prediction.event_id,
        prediction.model,
        prediction.model_version,
        prediction.label,
        latency_ms,
    )


def rollout_policy(policy: events_pb2.RolloutPolicy) -> RolloutPolicy:
    """The policy with its unset fields (0 on the wire) at their defaults."""
    defaults = RolloutPolicy()
    duration_ms = int(policy.max_duration.ToMilliseconds())
    try:
        return RolloutPolicy(
            min_paired=policy.min_paired or defaults.min_paired,
            max_duration_ms=duration_ms or defaults.max_duration_ms,
            alpha=policy.alpha or defaults.alpha,
            beta=policy.beta or defaults.beta,
            effect=policy.effect or defaults.effect,
            # Unset or zero: no budget (a negative one is refused below).
            latency_budget_ms=policy.latency_budget_p99.ToNanoseconds() / 1e6,
        )
    except ValueError as error:
        # Judging on other bounds than the registry asked for would be silently wrong.
        raise PoisonMessage(
            f"ModelRolloutStarted.policy: {error}", field="policy", rule="range"
        ) from None


def rollout_of(started: events_pb2.ModelRolloutStarted, record_ms: int) -> Rollout:
    """The rollout as the judge sees it; it starts when the record was written if
    `started_at` is unset. Any kind but a watch is judged as a trial: unset means
    one, and a trial is the kind that holds a candidate to its latency budget."""
    for name in ("rollout_id", "candidate_version", "champion_version"):
        if not getattr(started, name):
            raise PoisonMessage(
                f"ModelRolloutStarted.{name}: must be set", field=name, rule="required"
            )
    return Rollout(
        started.rollout_id,
        started.model,
        started.candidate_version,
        started.champion_version,
        _ms(started.started_at, record_ms),
        rollout_policy(started.policy),
        RolloutKind.WATCH if started.kind == events_pb2.ROLLOUT_KIND_WATCH else RolloutKind.TRIAL,
    )


async def on_prediction(app: DriftApplication, record: Record, record_ms: int) -> None:
    prediction = _decode(events_pb2.Prediction, record.value)
    if not prediction.event_id:
        raise PoisonMessage(
            "Prediction.event_id: must not be empty", field="event_id", rule="required"
        )
    if prediction.shadow:
        app.on_shadow(shadow_seen(prediction), record_ms)
        return
    seen = prediction_seen(prediction, record_ms)
    if seen is not None:
        app.on_prediction(seen, record_ms)


def _label_seen(
    message: events_pb2.Observation | events_pb2.Label,
    model: str,
    record_ms: int,
    *,
    correction: bool = False,
) -> LabelSeen:
    return LabelSeen(
        message.event_id,
        message.feature_set or model,
        message.label,
        _ms(message.event_time, record_ms),
        correction,
    )


async def on_observation(app: DriftApplication, record: Record, record_ms: int) -> None:
    observation = _decode(events_pb2.Observation, record.value)
    if observation.HasField("label"):
        app.on_label(_label_seen(observation, app.model, record_ms), record_ms)


async def on_label(app: DriftApplication, record: Record, record_ms: int) -> None:
    label = _decode(events_pb2.Label, record.value)
    correction = record.headers.extra.get(CORRECTION_HEADER) == "1"
    app.on_label(_label_seen(label, app.model, record_ms, correction=correction), record_ms)


async def on_promoted(app: DriftApplication, record: Record, record_ms: int) -> None:
    await app.on_promoted(_decode(events_pb2.ModelPromoted, record.value), record_ms)


async def on_registered(app: DriftApplication, record: Record, record_ms: int) -> None:
    app.on_registered(_decode(events_pb2.ModelRegistered, record.value), record_ms)


async def on_training_failed(app: DriftApplication, record: Record, record_ms: int) -> None:
    app.on_training_failed(_decode(events_pb2.TrainingFailed, record.value), record_ms)


async def on_rollout_started(app: DriftApplication, record: Record, record_ms: int) -> None:
    started = _decode(events_pb2.ModelRolloutStarted, record.value)
    if started.model == app.model:  # another model's rollout is no business of ours
        app.remember_rollout_trace(started.rollout_id, record.headers.trace_context())
        app.on_rollout_started(rollout_of(started, record_ms), record_ms)


async def on_rollout_ended(app: DriftApplication, record: Record, record_ms: int) -> None:
    ended = _decode(events_pb2.ModelRolloutEnded, record.value)
    app.on_rollout_ended(ended, record_ms)


HANDLERS: dict[str, Handler] = {
    events_pb2.Prediction.DESCRIPTOR.full_name: on_prediction,
    events_pb2.Observation.DESCRIPTOR.full_name: on_observation,
    events_pb2.Label.DESCRIPTOR.full_name: on_label,
    events_pb2.ModelPromoted.DESCRIPTOR.full_name: on_promoted,
    events_pb2.ModelRegistered.DESCRIPTOR.full_name: on_registered,
    events_pb2.TrainingFailed.DESCRIPTOR.full_name: on_training_failed,
    events_pb2.ModelRolloutStarted.DESCRIPTOR.full_name: on_rollout_started,
    events_pb2.ModelRolloutEnded.DESCRIPTOR.full_name: on_rollout_ended,
}


# ---------------------------------------------------------------------- the consumer


class DriftRecords:
    """The loop's batch handler: each record to its handler at its service time,
    then the join's expiry.

    `max_future_ms`: how far a record's timestamp may lie ahead of `clock` (the
    wall clock, epoch seconds) before it counts as that far ahead only.
    """

    def __init__(
        self,
        app: DriftApplication,
        *,
        max_future_ms: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._app = app
        self._max_future_ms = max_future_ms
        self._clock = clock

    async def handle_batch(self, records: Sequence[Record]) -> list[PoisonMessage | None]:
        outcomes: list[PoisonMessage | None] = []
        wall_ms = int(self._clock() * 1000)
        latest_ms = wall_ms + self._max_future_ms
        ahead: list[Record] = []
        for record in records:
            record_ms = max(record.timestamp_ms or 0, 0)
            if record_ms > latest_ms:
                ahead.append(record)
                record_ms = latest_ms
            try:
                await self._handle(record, record_ms or wall_ms)
            except PoisonMessage as poison:
                log.warning(
                    "drift_record_deadlettered",
                    topic=record.topic,
                    partition=record.partition,
                    offset=record.offset,
                    reason=poison.reason,
                )
                outcomes.append(poison)
            else:
                outcomes.append(None)
        if ahead:
            self._clamped(ahead, wall_ms)
        if records:
            self._app.expire()
        return outcomes

    def _clamped(self, ahead: Sequence[Record], wall_ms: int) -> None:
        metrics.RECORD_TIME_CLAMPED.labels(self._app.model).inc(len(ahead))
        first = ahead[0]
        log.warning(
            "drift_record_time_clamped",
            count=len(ahead),
            topic=first.topic,
            partition=first.partition,
            offset=first.offset,
            ahead_ms=first.timestamp_ms - wall_ms,
            max_future_ms=self._max_future_ms,
            meaning="record timestamps ahead of the wall clock count as the wall clock "
            "plus the allowance (DRIFTLOOP_DRIFT_MAX_FUTURE_S)",
        )

    async def _handle(self, record: Record, record_ms: int) -> None:
        ce_type = record.headers.type
        if not ce_type:
            raise PoisonMessage(
                "the record has no ce_type header", field="ce_type", rule="required"
            )
        kind = kind_of_type(ce_type)
        handler = None if kind is None else HANDLERS.get(kind.message)
        if handler is None:
            return
        await handler(self._app, record, record_ms)


def build_consumer(
    settings: Settings,
    config: DriftSettings,
    app: DriftApplication,
    publisher: Publisher,
    *,
    max_future_ms: int,
) -> ConsumerLoop:
    """The consumer of the drift sources, positioned where the saved state left off."""
    return ConsumerLoop(
        settings,
        topics=config.source_topics,
        group_id=GROUP_ID,
        publisher=publisher,
        handle_batch=DriftRecords(app, max_future_ms=max_future_ms).handle_batch,
        policy=StoredOffsets(app.load, app.store),
        deadletter_topic=config.deadletter_topic,
        after_poll=app.tick,
    )
