"""The drift engine: predictions and labels in, `DriftDetected` and `TrainingRequested` out.

Transport-neutral and clock-free: the Kafka entrypoint (or a test) decodes
records into `PredictionSeen` / `LabelSeen` and hands them over with the time
they were produced; the engine answers with an `EngineResult`: the events to
publish, and the detections that asked for no training. It watches
the model of one feature set and only the champion version's traffic: a
promotion resets every detector (new reference bins, empty windows) and ends
the request in flight.

It also judges rollouts (`domain/rollout.py`): a candidate's shadow answers
(`ShadowSeen`, `on_shadow`) go to the rollout judge and nowhere else, since a
second prediction of an event would be taken for a duplicate by the join and
would put the candidate's errors into the champion's error stream. The
champion's own answers and the labels go to the judge as well as to the watch,
and a verdict comes out as one `RolloutJudged`, with the candidate's shadow
latency (its p99, and how many answers it is of) among its figures.

Its whole state is plain data (`to_json` / `from_json`): detector inputs since
their last reset, the pending halves of the join, the labelled event ids,
the retrain policy and the rollouts on trial, so the service can store it
beside the source offsets it reflects and rebuild it exactly after a crash.

Warm-up: an aggregate over a window W of event time moves steadily while its
windows are still filling, which a data-drift detector would take for drift.
The engine counts the deployment as starting at the earliest event time it has
seen of its model (a label or a prediction), and feeds an aggregate's value to
its detectors only once the event is at least W past that start. The champion's
reference bins for an aggregate are not used: the registry does not say whether
the training rows' windows were full (a first model is trained on the first
labelled rows), so an aggregate's PSI compares against a baseline of its first
warm live values under the champion instead.

Only finite feature values reach a detector or a live reference: a NaN or an
infinity is no value of a distribution. They are skipped and named in the
result (`EngineResult.non_finite`), which the service counts.

A label correction (`LabelSeen.correction`) replaces the label its event was
given: a label still waiting for its prediction takes the new value, and a
prediction already joined is re-scored (its bit of the error stream, and the
performance detector's input, rebuilt from its inputs). The event is counted
once, as labelled; a correction of an event drift never saw labelled is its
first label.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from driftloop.v1 import common_pb2, events_pb2
from driftloop_core.featureset import FeatureSet
from google.protobuf import json_format
from google.protobuf.message import Message

from driftloop_drift.domain.changepoint import rise_change_point
from driftloop_drift.domain.detectors import (
    Alarm,
    KswinMonitor,
    PerformanceMonitor,
    Point,
    PsiMonitor,
)
from driftloop_drift.domain.join import Joiner, LabelSeen, PredictionSeen
from driftloop_drift.domain.policy import (
    LabelLedger,
    PolicyConfig,
    RetrainPolicy,
    derived_id,
    timestamp,
)
from driftloop_drift.domain.rollout import Judged, Rollout, RolloutJudge, ShadowSeen, Verdict

STATE_FORMAT = 2
# Warm values of an aggregate that form its PSI baseline, in PSI windows.
BASELINE_WINDOWS = 2
# New error-stream values between two estimates of the change point.
ESTIMATE_EVERY = 10


@dataclass(frozen=True)
class Suppressed:
    """A detection that asked for no training: one in flight, or cooling down."""

    drift_id: str
    why: str


@dataclass
class EngineResult:
    """What one input decided: events to publish, in order, and the detections
    that asked for no training, with why."""

    events: list[Message] = field(default_factory=list)
    suppressed: list[Suppressed] = field(default_factory=list)
    # Features whose value was NaN or infinite, left out of every detector.
    non_finite: list[str] = field(default_factory=list)
    # Rollouts judged (their `RolloutJudged` is among the events) and paired
    # events the rollout judge counted.
    verdicts: list[Verdict] = field(default_factory=list)
    paired: int = 0

    def add(self, other: EngineResult) -> None:
        self.events.extend(other.events)
        self.suppressed.extend(other.suppressed)
        self.non_finite.extend(other.non_finite)
        self.verdicts.extend(other.verdicts)
        self.paired += other.paired


@dataclass(frozen=True)
class EngineConfig:
    policy: PolicyConfig
    pending_ttl_ms: int
    max_pending: int
    label_memory: int
    history_limit: int


class DriftEngine:
    def __init__(self, featureset: FeatureSet, config: EngineConfig) -> None:
        self.model = featureset.name
        self._featureset = featureset
        self._spec = featureset.drift
        self._config = config
        self.champion: int | None = None
        self.reference: dict[str, common_pb2.ReferenceDistribution] = {}
        self.joiner = Joiner(config.pending_ttl_ms, config.max_pending)
        self.labels = LabelLedger(config.label_memory)
        self.policy = RetrainPolicy(self.model, config.policy)
        # Rollouts on trial: fed the same predictions and labels, apart from the
        # detectors (a candidate's shadow answers reach nothing else).
        self.rollouts = RolloutJudge(self.model, config.pending_ttl_ms, config.max_pending)
        self.clock_ms = 0
        # Earliest event time seen of this model: where every aggregate window began filling.
        self.first_event_ms: int | None = None
        # How long each watched aggregate takes to fill its window (raw fields: absent).
        self._warmup_ms = {
            agg.name: int(agg.window.total_seconds() * 1000)
            for agg in featureset.aggregations
            if agg.name in featureset.drift_features
        }
        self.ignored = 0  # predictions of another model or version than the champion
        self._performance: PerformanceMonitor | None = None
        self._data: list[PsiMonitor | KswinMonitor] = []
        # The champion's 0/1 error stream since its promotion, for the change point.
        self._errors: list[Point] = []
        self._errors_seen = 0
        self._estimate: tuple[int, int | None] | None = None  # (errors seen, change point)
        self._reset_monitors()

    # ------------------------------------------------------------------ inputs

    def on_prediction(self, prediction: PredictionSeen, now_ms: int) -> EngineResult:
        """A registered version's own answer (never a rollout candidate's shadow)."""
        self._tick(now_ms)
        if prediction.model != self.model:
            self.ignored += 1
            return EngineResult()
        judged = self.rollouts.on_champion(
            prediction.event_id, prediction.version, prediction.predicted, self.clock_ms
        )
        result = self._watch(prediction, now_ms)
        result.add(self._judged(judged))
        return result

    def on_shadow(self, shadow: ShadowSeen, now_ms: int) -> EngineResult:
        """A rollout candidate's shadow answer: for the rollout judge only. It never
        reaches the join, the detectors or the references, which watch the champion."""
        self._tick(now_ms)
        if shadow.model != self.model:
            return EngineResult()
        return self._judged(self.rollouts.on_candidate(shadow, self.clock_ms))

    def _watch(self, prediction: PredictionSeen, now_ms: int) -> EngineResult:
        """The champion's watch: data-drift detectors, the join and the error stream."""
        self._seen_event(prediction.event_time_ms)
        if self.champion is None:
            # The promotion has not reached us (or the registry was unreachable):
            # the version that serves is the champion.
            self.on_promoted(prediction.version, None, now_ms)
        if prediction.version != self.champion or self.joiner.seen_prediction(prediction.event_id):
            self.ignored += prediction.version != self.champion
            return EngineResult()
        alarms: list[Alarm] = []
        non_finite = [
            name
            for name, value in prediction.features.items()
            if not isinstance(value, str) and not math.isfinite(value)
        ]
        for monitor in self._data:
            value = prediction.features.get(monitor.feature)
            if value is None or monitor.feature in non_finite:
                continue
            if not self.is_warm(monitor.feature, prediction.event_time_ms):
                continue
            alarm = monitor.update(Point(prediction.event_id, prediction.event_time_ms, value))
            if alarm is not None:
                alarms.append(alarm)
        joined = self.joiner.add_prediction(prediction, now_ms)
        if joined is not None:
            alarms.extend(
                self._on_error(joined.event_id, joined.version, joined.error, joined.event_time_ms)
            )
        result = self._raise(alarms, now_ms)
        result.non_finite.extend(non_finite)
        return result

    def on_label(self, label: LabelSeen, now_ms: int) -> EngineResult:
        self._tick(now_ms)
        if label.model != self.model:
            return EngineResult()
        # The judge keeps the first label of an event (corrections are not applied there).
        judged = self.rollouts.on_label(label.event_id, label.label, self.clock_ms)
        result = self._label(label, now_ms)
        result.add(self._judged(judged))
        return result

    def _label(self, label: LabelSeen, now_ms: int) -> EngineResult:
        result = EngineResult()
        if label.correction and self.joiner.knows_label(label.event_id):
            # Counted already: the label changes, the count does not.
            rescored = self.joiner.correct(label)
            if rescored is not None and rescored.error is not None:
                self._rescore(rescored.event_id, rescored.error)
            return result
        if not self.labels.add(label.event_id, label.event_time_ms):
            return result
        self._seen_event(label.event_time_ms)
        joined = self.joiner.add_label(label, now_ms)
        if joined is not None:
            result.add(
                self._raise(
                    self._on_error(
                        joined.event_id, joined.version, joined.error, joined.event_time_ms
                    ),
                    now_ms,
                )
            )
        decision = self.policy.on_label(self.labels, self.champion is not None, now_ms)
        if decision.request is not None:
            result.events.append(decision.request)
        result.add(self._pending_request(now_ms))
        return result

    def on_promoted(
        self,
        version: int,
        reference: Mapping[str, common_pb2.ReferenceDistribution] | None,
        now_ms: int,
    ) -> None:
        """A version took the champion alias; a new version resets every detector."""
        self._tick(now_ms)
        if version == self.champion:
            if reference and not self.reference:
                self.reference = dict(reference)
                self._reset_monitors()
            return
        self.champion = version
        self.reference = dict(reference or {})
        self.policy.on_promoted()
        self._errors = []
        self._estimate = None
        self._reset_monitors()

    def on_outcome(
        self, model: str, request_id: str, now_ms: int, *, registered: bool = False
    ) -> bool:
        """`ModelRegistered` (`registered`) or `TrainingFailed` for a request; True
        when it was in flight."""
        self._tick(now_ms)
        return model == self.model and self.policy.on_outcome(request_id, registered=registered)

    def on_rollout_started(self, rollout: Rollout, now_ms: int) -> EngineResult:
        """A candidate of this model went on trial (another model's is ignored)."""
        self._tick(now_ms)
        return self._judged(self.rollouts.start(rollout, self.clock_ms))

    def on_rollout_ended(self, model: str, rollout_id: str, now_ms: int) -> bool:
        """The registry ended a rollout; True when it was one the judge held."""
        self._tick(now_ms)
        return model == self.model and self.rollouts.end(rollout_id)

    def judge_due(self, now_ms: int) -> EngineResult:
        """Rollouts whose time ran out by `now_ms`, judged. Service time is not
        moved: `now_ms` may be the wall clock, when no records come (see the
        application's `tick`)."""
        return self._judged(self.rollouts.due(max(now_ms, self.clock_ms)))

    def expire(self, now_ms: int) -> None:
        self._tick(now_ms)
        self.joiner.expire(self.clock_ms)
        self.rollouts.expire(self.clock_ms)

    def is_warm(self, feature: str, event_time_ms: int) -> bool:
        """Whether `feature`'s window was full at `event_time_ms` (raw fields always are)."""
        warmup = self._warmup_ms.get(feature)
        if warmup is None:
            return True
        return self.first_event_ms is not None and event_time_ms - self.first_event_ms >= warmup

    @property
    def needs_reference(self) -> bool:
        return self.champion is not None and not self.reference

    def statistics(self) -> dict[tuple[str, str], float]:
        """The current statistic of every detector, by (detector, feature)."""
        out: dict[tuple[str, str], float] = {}
        for monitor in (self._performance, *self._data):
            if monitor is not None and monitor.statistic is not None:
                out[(monitor.detector, monitor.feature)] = monitor.statistic
        return out

    # ------------------------------------------------------------------ internals

    def _seen_event(self, event_time_ms: int) -> None:
        if self.first_event_ms is None or event_time_ms < self.first_event_ms:
            self.first_event_ms = event_time_ms

    def _tick(self, now_ms: int) -> None:
        # Service time only moves forward, whatever order the partitions come in.
        self.clock_ms = max(self.clock_ms, now_ms)

    def _reset_monitors(self) -> None:
        spec = self._spec
        limit = self._config.history_limit
        self._performance = (
            PerformanceMonitor(spec.performance, limit) if spec.performance.enabled else None
        )
        self._data = []
        for feature in self._featureset.drift_features:
            reference = self.reference.get(feature)
            numeric = self._featureset.feature_type(feature) in ("float", "int")
            if spec.psi.enabled and feature in self._warmup_ms:
                # An aggregate: against its first warm values (see the module docstring).
                baseline = BASELINE_WINDOWS * spec.psi.window
                self._data.append(PsiMonitor(feature, None, spec.psi, baseline, numeric))
            elif spec.psi.enabled and reference is not None and reference.WhichOneof("kind"):
                # A reference without bins (no values in training) cannot be compared.
                with contextlib.suppress(ValueError):
                    self._data.append(PsiMonitor(feature, reference, spec.psi))
            if spec.kswin.enabled and numeric:
                self._data.append(KswinMonitor(feature, spec.kswin, limit))

    def _on_error(self, event_id: str, version: int, error: int, event_time_ms: int) -> list[Alarm]:
        if version != self.champion:
            return []
        point = Point(event_id, event_time_ms, error)
        self._errors.append(point)
        self._errors_seen += 1
        if len(self._errors) > self._config.history_limit:
            del self._errors[: len(self._errors) - self._config.history_limit // 2]
        if self._performance is None:
            return []
        alarm = self._performance.update(point)
        return [] if alarm is None else [alarm]

    def _rescore(self, event_id: str, error: int) -> None:
        """A corrected label changed a joined prediction's error bit: the error
        stream and the performance detector take the new bit in its place."""
        for position, point in enumerate(self._errors):
            if point.event_id == event_id and point.value != error:
                self._errors[position] = Point(event_id, point.event_time_ms, error)
                self._estimate = None
        if self._performance is not None:
            self._performance.correct(event_id, error)

    def change_point_ms(self) -> int | None:
        """Event time where the champion's error rate most likely rose, if it clearly did.

        Estimated again after every `ESTIMATE_EVERY` new values of the error stream.
        """
        if self._estimate is not None and self._errors_seen - self._estimate[0] < ESTIMATE_EVERY:
            return self._estimate[1]
        ordered = sorted(self._errors, key=lambda p: p.event_time_ms)
        found = rise_change_point([int(p.value) for p in ordered])
        change = None if found is None else ordered[found.index].event_time_ms
        self._estimate = (self._errors_seen, change)
        return change

    def _raise(self, alarms: list[Alarm], now_ms: int) -> EngineResult:
        result = EngineResult()
        for alarm in alarms:
            drift = self._drift_detected(alarm, now_ms)
            result.events.append(drift)
            # Without an estimate of its own, the detection itself: rows after it
            # are surely after the change (the error stream usually places it
            # earlier while the request waits).
            change = alarm.change or alarm.last
            decision = self.policy.on_drift(
                drift, change.event_time_ms, alarm.last.event_time_ms, now_ms
            )
            if decision.reason:
                result.suppressed.append(Suppressed(drift.drift_id, decision.reason))
            if decision.dropped:
                why = f"replaced by performance drift {drift.drift_id}"
                result.suppressed.append(Suppressed(decision.dropped, why))
        if alarms:
            result.add(self._pending_request(now_ms))
        return result

    def _pending_request(self, now_ms: int) -> EngineResult:
        """The pending drift's training request, once its post-drift rows are there;
        or the pending drift dropped, when the error stream never confirmed it."""
        if self.policy.pending is None:
            return EngineResult()
        decision = self.policy.on_pending(self.change_point_ms(), self.labels, now_ms)
        if decision.dropped:
            return EngineResult(suppressed=[Suppressed(decision.dropped, decision.reason)])
        return EngineResult([] if decision.request is None else [decision.request])

    def _judged(self, judged: Judged) -> EngineResult:
        """The judge's verdicts as `RolloutJudged` events, one per rollout."""
        result = EngineResult(paired=judged.paired)
        for verdict in judged.verdicts:
            result.events.append(rollout_judged(verdict))
            result.verdicts.append(verdict)
        return result

    def _drift_detected(self, alarm: Alarm, now_ms: int) -> events_pb2.DriftDetected:
        version = self.champion or 0
        drift = events_pb2.DriftDetected(
            drift_id=derived_id(
                self.model,
                version,
                alarm.detector,
                alarm.feature,
                alarm.first.event_id,
                alarm.last.event_id,
            ),
            model=self.model,
            model_version=version,
            kind=events_pb2.DRIFT_KIND_PERFORMANCE
            if alarm.is_performance
            else events_pb2.DRIFT_KIND_DATA,
            detector=alarm.detector,
            feature=alarm.feature,
            statistic=alarm.statistic,
            threshold=alarm.threshold,
            window_size=alarm.size,
            first_event_id=alarm.first.event_id,
            last_event_id=alarm.last.event_id,
            detected_at=timestamp(now_ms),
        )
        start = min(alarm.first.event_time_ms, alarm.last.event_time_ms)
        drift.window_range.start.CopyFrom(timestamp(start))
        drift.window_range.end.CopyFrom(timestamp(max(alarm.last.event_time_ms, start) + 1))
        return drift

    # ------------------------------------------------------------------ state

    def to_json(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "model": self.model,
            "clock_ms": self.clock_ms,
            "first_event_ms": self.first_event_ms,
            "champion": self.champion,
            "reference": {
                name: json_format.MessageToDict(ref) for name, ref in self.reference.items()
            },
            "performance": None if self._performance is None else self._performance.history(),
            "errors": [point.to_json() for point in self._errors],
            "data": {
                f"{monitor.detector}:{monitor.feature}": monitor.history() for monitor in self._data
            },
            "join": self.joiner.to_json(),
            "labels": self.labels.to_json(),
            "policy": self.policy.to_json(),
            "rollouts": self.rollouts.to_json(),
        }

    @classmethod
    def from_json(
        cls, featureset: FeatureSet, config: EngineConfig, data: Mapping[str, Any]
    ) -> DriftEngine:
        """Rebuild an engine, detectors included, from `to_json` of another one."""
        if data.get("format") != STATE_FORMAT or data.get("model") != featureset.name:
            raise ValueError(
                f"drift state is for model {data.get('model')!r} in format {data.get('format')}, "
                f"expected {featureset.name!r} in format {STATE_FORMAT}"
            )
        engine = cls(featureset, config)
        engine.clock_ms = int(data["clock_ms"])
        engine.first_event_ms = data.get("first_event_ms")
        engine.champion = data["champion"]
        engine.reference = {
            name: json_format.ParseDict(ref, common_pb2.ReferenceDistribution())
            for name, ref in data["reference"].items()
        }
        engine._reset_monitors()
        if engine._performance is not None and data["performance"] is not None:
            engine._performance.replay(Point.from_json(item) for item in data["performance"])
        histories = data["data"]
        for monitor in engine._data:
            history = histories.get(f"{monitor.detector}:{monitor.feature}")
            if history is None:
                continue
            if isinstance(monitor, KswinMonitor):
                monitor.replay(history)
            else:
                monitor.replay(Point.from_json(item) for item in history)
        engine._errors = [Point.from_json(item) for item in data["errors"]]
        engine.joiner.load(data["join"])
        engine.labels.load(data["labels"])
        engine.policy.load(data["policy"])
        # States saved before rollouts were judged have none.
        if "rollouts" in data:
            engine.rollouts.load(data["rollouts"])
        return engine


def rollout_judged(verdict: Verdict) -> events_pb2.RolloutJudged:
    """A verdict as the event the registry acts on."""
    rollout, figures = verdict.rollout, verdict.figures
    return events_pb2.RolloutJudged(
        rollout_id=rollout.rollout_id,
        model=rollout.model,
        candidate_version=rollout.candidate,
        champion_version=rollout.champion,
        verdict=events_pb2.ROLLOUT_VERDICT_PROMOTE
        if verdict.promote
        else events_pb2.ROLLOUT_VERDICT_REJECT,
        reason=verdict.reason,
        figures=events_pb2.RolloutFigures(
            paired=figures.paired,
            champion_errors=figures.champion_errors,
            candidate_errors=figures.candidate_errors,
            champion_only_right=figures.champion_only_right,
            candidate_only_right=figures.candidate_only_right,
            p_value=figures.p_value,
            log_likelihood_ratio=figures.log_likelihood_ratio,
            candidate_p99_ms=figures.candidate_p99_ms,
            candidate_scored=figures.candidate_scored,
        ),
        judged_at=timestamp(verdict.judged_ms),
    )
