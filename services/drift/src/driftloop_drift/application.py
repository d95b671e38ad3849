"""The drift service's application layer: one engine, its saved state, its outbox.

The Kafka entrypoint decodes records and calls `on_prediction`, `on_shadow`,
`on_label`, `on_promoted`, `on_registered`, `on_training_failed`,
`on_rollout_started` and `on_rollout_ended`; the engine decides,
and this layer counts what it decided (metrics and logs) and keeps the events
for the outbox. It holds the positions of the source partitions the state
reflects (`load` and `store` are the consumer's `StoredOffsets`): after each
batch the state and the next offsets are saved together, at most every
`snapshot_interval_s`, and always before an event goes out. An event is first
written to the outbox in the same transaction as the state that decided it,
then published, then removed from the outbox.

It also asks the registry for the champion's reference bins: at start, on a
promotion, and again every `REFERENCE_RETRY_S` while the registry cannot be
reached (the performance detector runs alone meanwhile).

A rollout's time limit must end it even when no records come, while service
time (the newest record timestamp) stands still: once polls have brought
nothing for `IDLE_BEFORE_WALL_CLOCK_S`, `tick` judges the rollouts whose time
ran out by the wall clock. While records flow (a backlog read after a restart
included) they alone say the time, so a backlog's labels are not cut off by a
deadline the stream had not reached; the few seconds of grace keep the first
empty polls after a start, before the backlog's first fetch, from counting as
idle.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

from driftloop.v1 import common_pb2, events_pb2
from driftloop_core.logging import get_logger
from google.protobuf.message import Message
from opentelemetry.context import Context

from driftloop_drift import metrics
from driftloop_drift.adapters.state import DriftStateStore, OutboxEvent, Position
from driftloop_drift.domain.join import LabelSeen, PredictionSeen
from driftloop_drift.domain.rollout import Rollout, ShadowSeen
from driftloop_drift.handlers import DriftEngine, EngineResult
from driftloop_drift.outbox import Outbox, outbox_event
from driftloop_drift.ports import ChampionReference, References, RegistryUnavailable

log = get_logger(__name__)

# How often a missing champion reference is asked for again.
REFERENCE_RETRY_S = 30.0
# How long polls must bring nothing before the wall clock says the time to rollouts.
IDLE_BEFORE_WALL_CLOCK_S = 5.0

EngineFactory = Callable[[dict[str, Any] | None], DriftEngine]


class DriftApplication:
    """The engine of one model with its state store, outbox and registry lookups."""

    def __init__(
        self,
        engine_factory: EngineFactory,
        store: DriftStateStore,
        outbox: Outbox,
        references: References,
        *,
        snapshot_interval_s: float,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._engine_factory = engine_factory
        self._store = store
        self._outbox = outbox
        self._references = references
        self._snapshot_interval_s = snapshot_interval_s
        self._clock = clock
        self._wall_clock = wall_clock
        self._engine: DriftEngine | None = None
        self._resumed = False
        self._positions: dict[Position, int] = {}
        self._decided: list[Message] = []  # events of records whose positions are not stored yet
        self._dirty = False  # the state has changed since it was saved
        self._ahead = False  # inputs were handled whose positions are not stored yet
        self._saved_at = 0.0
        self._reference_tried_at = 0.0
        self._input_seen = False  # an input was handled since the last tick
        self._idle_since: float | None = None  # first tick of the current idle spell

    @property
    def engine(self) -> DriftEngine:
        assert self._engine is not None, "DriftApplication.load() was not awaited"
        return self._engine

    @property
    def model(self) -> str:
        return self.engine.model

    # ------------------------------------------------------------------ lifecycle

    async def load(self) -> dict[Position, int]:
        """Rebuild the engine from the saved state, publish what the outbox holds,
        and return the positions to read from."""
        saved = await asyncio.to_thread(self._store.load)
        self._engine = self._engine_factory(saved.state)
        self._resumed = saved.state is not None
        self._positions = dict(saved.positions)
        await self._outbox.publish(saved.outbox)
        return dict(self._positions)

    async def start(self) -> None:
        """Ask for the champion's reference when the saved state has none."""
        engine = self.engine
        if engine.champion is None or engine.needs_reference:
            await self._fetch_reference(engine.champion)
        log.info(
            "drift_started",
            model=engine.model,
            champion=engine.champion,
            resumed=self._resumed,
            labelled=engine.labels.total,
            state=str(self._store.path),
        )

    async def close(self) -> None:
        """Save what changed since the last save, unless inputs were handled whose
        positions never came (a batch that failed): those records are read again."""
        if self._engine is not None and self._dirty:
            if self._ahead:
                log.warning("drift_state_not_saved", reason="a batch was handled but not settled")
            else:
                await self._save([])
        await asyncio.to_thread(self._store.close)

    # ------------------------------------------------------------------ inputs

    def on_prediction(self, prediction: PredictionSeen, now_ms: int) -> None:
        self._handled()
        self._count(self.engine.on_prediction(prediction, now_ms))

    def on_shadow(self, shadow: ShadowSeen, now_ms: int) -> None:
        self._handled()
        self._count(self.engine.on_shadow(shadow, now_ms))

    def on_label(self, label: LabelSeen, now_ms: int) -> None:
        self._handled()
        self._count(self.engine.on_label(label, now_ms))

    def remember_rollout_trace(self, rollout_id: str, context: Context) -> None:
        """The trace a rollout's start came in: its verdict is published in it."""
        self._outbox.remember_rollout(rollout_id, context)

    def on_rollout_started(self, rollout: Rollout, now_ms: int) -> None:
        self._handled()
        engine = self.engine
        known = engine.rollouts.rollout(rollout.rollout_id) is not None
        result = engine.on_rollout_started(rollout, now_ms)
        if not known and engine.rollouts.rollout(rollout.rollout_id) is not None:
            policy = rollout.policy
            log.info(
                "rollout_opened",
                model=rollout.model,
                rollout_id=rollout.rollout_id,
                candidate=rollout.candidate,
                champion=rollout.champion,
                kind=rollout.kind.value,
                min_paired=policy.min_paired,
                max_duration_s=policy.max_duration_ms / 1000,
                alpha=policy.alpha,
                beta=policy.beta,
                effect=policy.effect,
                latency_budget_ms=rollout.latency_budget_ms,
            )
        self._count(result)

    def on_rollout_ended(self, ended: events_pb2.ModelRolloutEnded, now_ms: int) -> None:
        self._handled()
        if self.engine.on_rollout_ended(ended.model, ended.rollout_id, now_ms):
            log.info(
                "rollout_closed",
                model=ended.model,
                rollout_id=ended.rollout_id,
                outcome=events_pb2.RolloutOutcome.Name(ended.outcome),
            )

    async def on_promoted(self, promoted: events_pb2.ModelPromoted, now_ms: int) -> None:
        """A new champion of this model: its reference, and every detector reset."""
        engine = self.engine
        self._handled()
        if promoted.model != engine.model or promoted.to_version == engine.champion:
            return
        reference = await self._reference_for(promoted.to_version)
        engine.on_promoted(promoted.to_version, reference, now_ms)
        log.info(
            "drift_detectors_reset",
            model=promoted.model,
            version=promoted.to_version,
            reference=sorted(reference or ()),
        )

    def on_registered(self, registered: events_pb2.ModelRegistered, now_ms: int) -> None:
        if self._answered(registered.model, registered.request_id, now_ms, registered=True):
            log.info(
                "training_request_answered",
                request_id=registered.request_id,
                outcome="registered",
                version=registered.version,
            )

    def on_training_failed(self, failed: events_pb2.TrainingFailed, now_ms: int) -> None:
        if self._answered(failed.model, failed.request_id, now_ms):
            log.info(
                "training_request_answered",
                request_id=failed.request_id,
                outcome="failed",
                stage=failed.stage,
            )

    def expire(self) -> None:
        """Drop the halves of the join that waited too long (after each batch)."""
        self.engine.expire(self.engine.clock_ms)

    def _answered(
        self, model: str, request_id: str, now_ms: int, *, registered: bool = False
    ) -> bool:
        self._handled()
        return self.engine.on_outcome(model, request_id, now_ms, registered=registered)

    def _handled(self) -> None:
        """An input changed the state; its position is stored after its batch."""
        self._ahead = self._dirty = True
        self._input_seen = True

    def _count(self, result: EngineResult) -> None:
        """Metrics and logs of what the engine decided; its events wait for the outbox."""
        self._dirty = self._dirty or bool(result.events)
        model = self.engine.model
        for message in result.events:
            if isinstance(message, events_pb2.DriftDetected):
                kind = events_pb2.DriftKind.Name(message.kind).removeprefix("DRIFT_KIND_").lower()
                metrics.DETECTIONS.labels(model, kind, message.detector).inc()
                log.warning(
                    "drift_detected",
                    model=model,
                    version=message.model_version,
                    detector=message.detector,
                    feature=message.feature,
                    statistic=message.statistic,
                    threshold=message.threshold,
                    window=message.window_size,
                    drift_id=message.drift_id,
                )
            elif isinstance(message, events_pb2.TrainingRequested):
                trigger = events_pb2.TrainingTrigger.Name(message.trigger)
                metrics.TRAINING_REQUESTS.labels(
                    model, trigger.removeprefix("TRAINING_TRIGGER_").lower()
                ).inc()
                log.info(
                    "training_requested",
                    model=model,
                    request_id=message.request_id,
                    trigger=trigger,
                    reason=message.reason,
                )
        if result.paired:
            metrics.ROLLOUT_PAIRED.labels(model).inc(result.paired)
        for verdict in result.verdicts:
            figures = verdict.figures
            metrics.ROLLOUT_VERDICTS.labels(
                model, "promote" if verdict.promote else "reject", verdict.rule.value
            ).inc()
            log.info(
                "rollout_judged",
                model=model,
                rollout_id=verdict.rollout.rollout_id,
                candidate=verdict.rollout.candidate,
                champion=verdict.rollout.champion,
                verdict="promote" if verdict.promote else "reject",
                rule=verdict.rule.value,
                paired=figures.paired,
                p_value=figures.p_value,
                log_likelihood_ratio=figures.log_likelihood_ratio,
                candidate_p99_ms=figures.candidate_p99_ms,
                candidate_scored=figures.candidate_scored,
                reason=verdict.reason,
            )
        for feature in result.non_finite:
            metrics.NON_FINITE.labels(model, feature).inc()
        for suppressed in result.suppressed:
            metrics.SUPPRESSED.labels(model).inc()
            log.info(
                "training_request_suppressed",
                model=model,
                drift_id=suppressed.drift_id,
                why=suppressed.why,
            )
        self._decided.extend(result.events)

    # ------------------------------------------------------------------ state and outbox

    async def store(self, positions: Mapping[Position, int]) -> None:
        """The next offsets of a handled batch: saved with the state at once when it
        decided events (which are then published), else by `tick` when due."""
        self._positions.update(positions)
        self._ahead = False
        self._dirty = True
        await self._publish_decided()

    async def _publish_decided(self) -> None:
        """Save the decided events with the state that decided them, then publish."""
        if self._decided:
            events = [outbox_event(message) for message in self._decided]
            await self._save(events)
            self._decided = []
            await self._outbox.publish(events)

    async def tick(self) -> None:
        """After every poll: rollouts whose time ran out, the periodic save, the
        reference retry, the statistics."""
        await self._judge_due()
        now = self._clock()
        if self._dirty and not self._ahead and now - self._saved_at >= self._snapshot_interval_s:
            await self._save([])
        engine = self.engine
        if engine.needs_reference and now - self._reference_tried_at >= REFERENCE_RETRY_S:
            await self._fetch_reference(engine.champion)
        for (detector, feature), value in engine.statistics().items():
            metrics.STATISTIC.labels(engine.model, feature, detector).set(value)
        metrics.ROLLOUTS_OPEN.labels(engine.model).set(engine.rollouts.open)

    async def _judge_due(self) -> None:
        """Judge the rollouts whose time ran out: by service time while records
        flow, by the wall clock once polls have brought none for a while (see the
        module docstring)."""
        engine = self.engine
        now = self._clock()
        if self._input_seen:
            self._input_seen, self._idle_since = False, None
        elif self._idle_since is None:
            self._idle_since = now
        now_ms = engine.clock_ms
        if self._idle_since is not None and now - self._idle_since >= IDLE_BEFORE_WALL_CLOCK_S:
            now_ms = max(now_ms, int(self._wall_clock() * 1000))
        self._count(engine.judge_due(now_ms))
        if not self._ahead:
            # Else a batch is handled but its positions are not stored: its `store`
            # saves and publishes the verdict with them.
            await self._publish_decided()

    async def _save(self, events: list[OutboxEvent]) -> None:
        state = self.engine.to_json()
        await asyncio.to_thread(self._store.save, state, dict(self._positions), events)
        self._saved_at = self._clock()
        self._dirty = False

    # ------------------------------------------------------------------ registry

    async def _reference_for(
        self, version: int
    ) -> dict[str, common_pb2.ReferenceDistribution] | None:
        found = await self._lookup(version)
        return None if found is None else found.reference

    async def _fetch_reference(self, version: int | None) -> None:
        found = await self._lookup(version)
        if found is not None:
            self.engine.on_promoted(found.version, found.reference, self.engine.clock_ms)
            self._dirty = True

    async def _lookup(self, version: int | None) -> ChampionReference | None:
        """That version (the champion when None); None when absent or unreachable."""
        self._reference_tried_at = self._clock()
        try:
            return await self._references.lookup(self.engine.model, version)
        except RegistryUnavailable as error:
            log.warning("champion_reference_unavailable", version=version, error=str(error))
            return None
