"""The loop on a simulated clock: drift engine, trainer and registry gate, in process.

No broker and no services: the same `DriftEngine` the drift service runs, the
same `train` the trainer runs and the registry's `decide_promotion`, driven on
a simulated clock (events at `rate` per second, each label `label_delay_s`
later, a training run taking `train_s`). What it saw is recorded as the demo's
`Timeline` (times are simulated epoch seconds, starting at the first event's
time), so the demo's report reads it as it reads a live run.

Every event is answered as inference answers it: the arena (the online
learners beside the champion, `driftloop_inference.online.arena`) picks who
answers, the online learners see each served event and learn each label as it
arrives, and drift watches the champion's own answers. The champion's answers
are computed in batches: a model answers the same for an event whenever it is
asked, and a batch is dropped when the champion changes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from driftloop.v1 import events_pb2
from driftloop_core.featureset import FeatureSet
from driftloop_drift.config import DriftSettings
from driftloop_drift.domain.join import LabelSeen, PredictionSeen
from driftloop_drift.handlers import DriftEngine, EngineResult
from driftloop_inference.online.arena import Arena, ArenaConfig
from driftloop_registry.domain import GatePolicy, decide_promotion
from driftloop_trainer.config import TrainerSettings
from driftloop_trainer.onnx_model import reference_distributions
from driftloop_trainer.training import (
    TrainedModel,
    TrainingData,
    TrainingError,
    classification_metrics,
    is_categorical,
    positive_probability,
    train,
)

from driftloop_cli.backtest.stream import BacktestEvent
from driftloop_cli.demo.timeline import (
    DriftSeen,
    FailureSeen,
    PromotionSeen,
    Served,
    Timeline,
    TrainingSeen,
    VersionSeen,
)

_BATCH = 256


@dataclass(frozen=True)
class LoopOptions:
    rate: float = 50.0
    label_delay_s: float = 2.0
    train_s: float = 1.5
    # Fewer rows than this and the simulated trainer refuses the request.
    min_rows: int = 300
    gate: GatePolicy = field(default_factory=GatePolicy)
    # The online learners beside the champion (inference's defaults); None: champion only.
    arena: ArenaConfig | None = field(default_factory=ArenaConfig)


@dataclass
class Version:
    number: int
    model: TrainedModel
    trigger: str
    serving_from: int | None  # first event index it answers
    rows: int
    window: str
    promoted: bool = False


@dataclass(frozen=True)
class Alarm:
    index: int
    detector: str
    feature: str
    model_version: int


def training_data(featureset: FeatureSet, events: Sequence[BacktestEvent]) -> TrainingData:
    """Rows as the trainer reads them from the offline log (numbers through FP32,
    as serving sends them)."""
    names = tuple(featureset.model.features)
    columns: dict[str, Any] = {}
    for name in names:
        values = [e.features[name] for e in events]
        columns[name] = (
            np.asarray(values, dtype=object)
            if is_categorical(featureset, name)
            else np.asarray(values, dtype=np.float32).astype(np.float64)
        )
    return TrainingData(
        names,
        columns,
        np.asarray([e.label for e in events], dtype=np.int64),
        np.asarray([e.event_time_ms for e in events], dtype=np.int64),
        tuple(e.event_id for e in events),
    )


@dataclass
class Backtest:
    featureset: FeatureSet
    drift: DriftSettings
    options: LoopOptions = field(default_factory=LoopOptions)
    versions: list[Version] = field(default_factory=list)
    alarms: list[Alarm] = field(default_factory=list)
    # Detections that asked for no training, with why (in flight, cooling down).
    suppressed: list[dict[str, Any]] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    timeline: Timeline = field(default_factory=Timeline)

    def run(
        self,
        events: Sequence[BacktestEvent],
        progress: Callable[[int], None] | None = None,
    ) -> Timeline:
        """Replay `events` (in order) and return what the loop did; `progress` is
        called with the number of events replayed so far."""
        model = self.featureset.name
        engine = DriftEngine(self.featureset, self.drift.engine_config())
        start_s = events[0].event_time_ms / 1000 if events else 0.0
        step_ms = 1000.0 / self.options.rate
        timeline = self.timeline
        timeline.started_at = start_s
        labelled: list[BacktestEvent] = []  # in arrival order
        pending_labels: deque[tuple[int, BacktestEvent]] = deque()
        pending_training: deque[tuple[int, events_pb2.TrainingRequested]] = deque()
        champion: Version | None = None
        cached: dict[int, int] = {}  # event index -> the champion's prediction
        arena = None if self.options.arena is None else Arena(self.options.arena)

        def at(now_ms: float) -> float:
            return start_s + now_ms / 1000

        def handle(decided: EngineResult, now_ms: int, index: int, event_id: str) -> None:
            for quiet in decided.suppressed:
                self.suppressed.append(
                    {"drift_id": quiet.drift_id, "event": index, "why": quiet.why}
                )
                self.log.append(f"event {index}: no training asked: {quiet.why}")
            for message in decided.events:
                if isinstance(message, events_pb2.DriftDetected):
                    self.alarms.append(
                        Alarm(index, message.detector, message.feature, message.model_version)
                    )
                    timeline.drifts.append(
                        DriftSeen(
                            message.drift_id,
                            message.model_version,
                            events_pb2.DriftKind.Name(message.kind)
                            .removeprefix("DRIFT_KIND_")
                            .lower(),
                            message.detector,
                            message.feature,
                            message.statistic,
                            message.threshold,
                            event_id,
                            at(now_ms),
                        )
                    )
                    self.log.append(
                        f"event {index}: drift {message.detector} {message.feature} "
                        f"on v{message.model_version} stat {message.statistic:.4g}"
                    )
                elif isinstance(message, events_pb2.TrainingRequested):
                    trigger = (
                        events_pb2.TrainingTrigger.Name(message.trigger)
                        .removeprefix("TRAINING_TRIGGER_")
                        .lower()
                    )
                    timeline.trainings.append(
                        TrainingSeen(
                            message.request_id, trigger, message.parent_drift_id, at(now_ms)
                        )
                    )
                    done = now_ms + int(self.options.train_s * 1000)
                    pending_training.append((done, message))

        for event in events:
            now_ms = int(event.index * step_ms)
            timeline.sent[event.index] = at(now_ms)
            while pending_labels and pending_labels[0][0] <= now_ms:
                due, seen = pending_labels.popleft()
                labelled.append(seen)
                timeline.labels_sent += 1
                if arena is not None:
                    arena.label(seen.event_id, seen.label)
                label = LabelSeen(seen.event_id, model, seen.label, seen.event_time_ms)
                handle(engine.on_label(label, due), due, event.index, event.event_id)
            while pending_training and pending_training[0][0] <= now_ms:
                done_ms, request = pending_training.popleft()
                promoted = self._train(request, labelled, champion, engine, event.index, done_ms)
                if promoted is not champion:
                    champion = promoted
                    cached.clear()
            pending_labels.append((now_ms + int(self.options.label_delay_s * 1000), event))
            if progress is not None:
                progress(event.index + 1)
            answer = self._champion_answer(champion, cached, events, event.index)
            if answer is not None:
                cached = answer[1]
            predicted = None if answer is None else answer[0]
            assert champion is None or predicted is not None
            version = None if champion is None else champion.number
            learner = "" if arena is None else arena.leader(version)
            if learner:
                assert arena is not None
                online = arena.answer(learner, event.features)
                timeline.served.append(
                    Served(
                        event.index,
                        at(now_ms),
                        event.label,
                        "ok",
                        version,
                        online.label,
                        learner=online.learner,
                    )
                )
            elif champion is None or predicted is None:
                timeline.served.append(Served(event.index, at(now_ms), event.label, "no_model"))
            else:
                if champion.serving_from is None:
                    champion.serving_from = event.index
                timeline.served.append(
                    Served(event.index, at(now_ms), event.label, "ok", version, predicted)
                )
            if arena is not None:
                shadow = None if version is None or predicted is None else (version, predicted)
                arena.observe(event.event_id, event.features, shadow)
            if champion is None or predicted is None:
                continue
            # Drift watches the champion's own answer, whoever served the event.
            prediction = PredictionSeen(
                event.event_id,
                model,
                champion.number,
                predicted,
                event.event_time_ms,
                event.features,
            )
            handle(engine.on_prediction(prediction, now_ms), now_ms, event.index, event.event_id)
        timeline.finished_at = at(len(events) * step_ms)
        timeline.outcome = "completed"
        return timeline

    def _champion_answer(
        self,
        champion: Version | None,
        cached: dict[int, int],
        events: Sequence[BacktestEvent],
        index: int,
    ) -> tuple[int, dict[int, int]] | None:
        """The champion's answer for event `index`, and the batch cache holding it."""
        if champion is None:
            return None
        if index not in cached:
            batch = events[index : index + _BATCH]
            data = training_data(self.featureset, batch)
            probabilities = positive_probability(champion.model.pipeline, data)
            cached = {e.index: int(p >= 0.5) for e, p in zip(batch, probabilities, strict=True)}
        return cached[index], cached

    def _train(
        self,
        request: events_pb2.TrainingRequested,
        labelled: list[BacktestEvent],
        champion: Version | None,
        engine: DriftEngine,
        index: int,
        now_ms: int,
    ) -> Version | None:
        """One training run and the gate; the version serving afterwards."""
        start_s = self.timeline.started_at
        rows = sorted(labelled, key=lambda e: (e.event_time_ms, e.event_id))
        window = request.window
        if window.WhichOneof("kind") == "time_range":
            lo = window.time_range.start.ToMilliseconds()
            hi = window.time_range.end.ToMilliseconds()
            rows = [e for e in rows if lo <= e.event_time_ms < hi]
            what = f"time range from event {rows[0].index if rows else '?'}"
        else:
            rows = rows[-window.last_n :]
            what = f"last {window.last_n}"
        trigger = events_pb2.TrainingTrigger.Name(request.trigger).removeprefix("TRAINING_TRIGGER_")
        engine.on_outcome(self.featureset.name, request.request_id, now_ms)
        failed_at = start_s + now_ms / 1000
        if len(rows) < self.options.min_rows:
            self.log.append(f"event {index}: {trigger} refused, {len(rows)} rows ({what})")
            self.timeline.failures.append(
                FailureSeen(request.request_id, "load_data", f"{len(rows)} rows", failed_at)
            )
            return champion
        try:
            model = train(
                training_data(self.featureset, rows),
                self.featureset,
                # The trainer's own settings (DRIFTLOOP_TRAINER_*), as the service reads them.
                replace(TrainerSettings().training_config(), min_rows=self.options.min_rows),
            )
        except TrainingError as error:
            self.log.append(f"event {index}: training failed: {error}")
            self.timeline.failures.append(
                FailureSeen(request.request_id, error.stage, str(error), failed_at)
            )
            return champion
        number = len(self.versions) + 1
        version = Version(number, model, trigger, None, len(rows), what)
        self.versions.append(version)
        champion_metrics: dict[str, float] = {}
        if champion is not None:
            old = positive_probability(champion.model.pipeline, model.evaluation)
            champion_metrics = classification_metrics(model.evaluation.labels, old)
        decision = decide_promotion(
            self.options.gate,
            metrics=model.metrics,
            champion_metrics=champion_metrics,
            measured_champion=champion.number if champion else None,
            current_champion=champion.number if champion else None,
        )
        self.log.append(
            f"event {index}: v{number} ({trigger}, {len(rows)} rows, {what}): {decision.reason}"
        )
        self.timeline.versions.append(
            VersionSeen(
                number,
                "champion" if decision.promote else "rejected",
                decision.reason,
                request.request_id,
                dict(model.metrics),
                failed_at,
            )
        )
        if not decision.promote:
            return champion
        version.promoted = True
        self.timeline.promotions.append(
            PromotionSeen(
                number,
                champion.number if champion else None,
                "champion",
                "promote",
                decision.reason,
                failed_at,
            )
        )
        engine.on_promoted(
            number, reference_distributions(model.reference, self.featureset), now_ms
        )
        return version
