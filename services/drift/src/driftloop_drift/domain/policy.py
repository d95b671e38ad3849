"""When a drift (or the lack of any model) becomes a training request.

Per model: at most one request in flight, until its outcome (`ModelRegistered`
or `TrainingFailed` with its request id), a promotion, or `in_flight_timeout`;
and a cooldown after a drift's request (a bootstrap's cooldown holds back
only the next bootstrap: a change early in the stream is not a retrain storm).

A drift does not ask for training at once: a model trained on the rows around
the detection would mostly learn the old concept. It becomes the *pending*
drift, and each new label checks it again: once the labels have reached the
events the detector saw (before, the error stream cannot show the change) and
`min_post_drift_rows` labelled events fall after the change point (which the
engine re-estimates as labels arrive), the request asks for exactly those
events. When that has not happened within `post_drift_wait`, it asks for the
last `last_n` labelled rows instead.
Further drifts while one is pending only add to the record. With no champion
and `bootstrap_min_labels` labelled events, a `bootstrap` run is asked for.

The error stream decides. A data drift (PSI, KSWIN) asks for training only
once the error stream shows a rise (the engine's change point), and is
dropped when none shows within `post_drift_wait` (unless
`data_drift_retrains`): a shift in the inputs that costs no accuracy needs no
new model. A performance drift is never lost to a data drift: it replaces a
data drift still waiting, and supersedes a request in flight whose rows the
error stream did not choose (the superseded request's outcome is then
ignored, as for any request no longer in flight).

Request ids derive from the drift id (or the model's bootstrap attempt), so
replaying the same inputs asks for the same run, which the trainer runs once.
"""

from __future__ import annotations

import uuid
from bisect import bisect_left, insort
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from driftloop.v1 import common_pb2, events_pb2
from google.protobuf.timestamp_pb2 import Timestamp

# Fixed so that ids derived from drift ids are the same in every process.
NAMESPACE = uuid.UUID("0f4d1c8e-52a7-4b7e-9d1e-3c6a2b9e8d41")
REQUESTED_BY = "drift"


def derived_id(*parts: object) -> str:
    return uuid.uuid5(NAMESPACE, "/".join(str(part) for part in parts)).hex


def timestamp(ms: int) -> Timestamp:
    stamp = Timestamp()
    stamp.FromMilliseconds(ms)
    return stamp


@dataclass(frozen=True)
class PolicyConfig:
    cooldown_ms: int
    in_flight_timeout_ms: int
    bootstrap_min_labels: int
    last_n: int
    min_post_drift_rows: int
    # How long a drift may wait for its post-drift rows before settling for the last N.
    post_drift_wait_ms: int = 15 * 60_000
    # Whether a data drift the error stream never confirms still asks for training
    # (the last `last_n` rows, after `post_drift_wait_ms`).
    data_drift_retrains: bool = False


@dataclass
class PendingDrift:
    """A drift waiting for enough labelled events after its change point."""

    drift_id: str
    model_version: int
    detector: str
    feature: str
    statistic: float
    threshold: float
    since_ms: int  # when it was detected
    # The detector's own change point (its estimate, else the detection), used
    # while the error stream shows none.
    detector_change_ms: int
    # Event time of the last value the detector saw: no decision before the
    # labels reach it, since until then the error stream cannot show the change.
    detected_event_ms: int
    performance: bool = False
    # The request in flight this drift pushed aside, if any.
    supersedes: str = ""

    def to_json(self) -> list[Any]:
        return [
            self.drift_id,
            self.model_version,
            self.detector,
            self.feature,
            self.statistic,
            self.threshold,
            self.since_ms,
            self.detector_change_ms,
            self.detected_event_ms,
            self.performance,
            self.supersedes,
        ]

    @classmethod
    def from_json(cls, data: list[Any]) -> PendingDrift:
        return cls(
            str(data[0]),
            int(data[1]),
            str(data[2]),
            str(data[3]),
            float(data[4]),
            float(data[5]),
            int(data[6]),
            int(data[7]),
            int(data[8]),
            bool(data[9]) if len(data) > 9 else False,
            str(data[10]) if len(data) > 10 else "",
        )


@dataclass
class InFlight:
    request_id: str
    trigger: int
    since_ms: int
    # Its rows start where the error stream placed a change (else a performance
    # drift may supersede it).
    confirmed: bool = True


class LabelLedger:
    """The labelled events of one model: how many ever, and the recent ones' event times.

    Also the label deduplication: an event id already here is not counted again.
    """

    def __init__(self, memory: int) -> None:
        self._memory = memory
        self.total = 0
        self._ids: OrderedDict[str, int] = OrderedDict()
        self._times: list[int] = []  # sorted event times of the remembered ids

    def add(self, event_id: str, event_time_ms: int) -> bool:
        """Record a label; False when this event id was labelled before."""
        if event_id in self._ids:
            return False
        self._ids[event_id] = event_time_ms
        insort(self._times, event_time_ms)
        self.total += 1
        while len(self._ids) > self._memory:
            _, oldest = self._ids.popitem(last=False)
            del self._times[bisect_left(self._times, oldest)]
        return True

    def since(self, start_ms: int) -> int:
        """How many remembered labelled events have an event time at or after `start_ms`."""
        return len(self._times) - bisect_left(self._times, start_ms)

    @property
    def latest_ms(self) -> int | None:
        return self._times[-1] if self._times else None

    def to_json(self) -> dict[str, Any]:
        return {"total": self.total, "ids": list(self._ids.items())}

    def load(self, data: dict[str, Any]) -> None:
        self.total = int(data["total"])
        for event_id, event_time in data["ids"]:
            self._ids[event_id] = int(event_time)
        self._times = sorted(self._ids.values())


@dataclass
class Decision:
    """A request to publish, or the reason none is."""

    request: events_pb2.TrainingRequested | None
    reason: str
    # The pending drift this decision dropped without a request, if any.
    dropped: str = ""


class RetrainPolicy:
    """The retrain state of one model."""

    def __init__(self, model: str, config: PolicyConfig) -> None:
        self.model = model
        self._config = config
        self.in_flight: InFlight | None = None
        self.pending: PendingDrift | None = None
        self.last_request_ms: int | None = None
        self.last_trigger: int = events_pb2.TRAINING_TRIGGER_UNSPECIFIED
        self.bootstrap_attempts = 0

    def _blocked(self, now_ms: int, *, drift: bool) -> str:
        """Why no request can start now ("" when one can).

        The cooldown is against retraining storms: a drift waits for it after a
        drift's request, a bootstrap after any request. A bootstrap is not a
        reaction to a change, so a drift right after the first model (a change
        that came early in the stream) is not held back by it."""
        if self.in_flight is not None:
            if now_ms - self.in_flight.since_ms < self._config.in_flight_timeout_ms:
                return f"request {self.in_flight.request_id} is in flight"
            self.in_flight = None
        cooling = (
            self.last_request_ms is not None
            and now_ms - self.last_request_ms < self._config.cooldown_ms
        )
        if cooling and (not drift or self.last_trigger == events_pb2.TRAINING_TRIGGER_DRIFT):
            return "cooling down after the last request"
        return ""

    def on_drift(
        self, drift: events_pb2.DriftDetected, change_ms: int, detected_ms: int, now_ms: int
    ) -> Decision:
        """Record a drift whose detector places the change at `change_ms` and saw
        values up to `detected_ms`; the request waits for post-drift rows (see
        `on_pending`)."""
        performance = drift.kind == events_pb2.DRIFT_KIND_PERFORMANCE
        flight = self.in_flight
        supersedes = ""
        if (
            performance
            and flight is not None
            and flight.trigger == events_pb2.TRAINING_TRIGGER_DRIFT
            and not flight.confirmed
        ):
            # Trained on rows the error stream did not choose: likely before this change.
            supersedes = flight.request_id
            self.in_flight = None
            self.last_request_ms = None
        blocked = self._blocked(now_ms, drift=True)
        if self.in_flight is not None:
            return Decision(None, blocked)
        if self.pending is not None and (self.pending.performance or not performance):
            return Decision(
                None, f"drift {self.pending.drift_id} already waits for post-drift rows"
            )
        replaced = "" if self.pending is None else self.pending.drift_id
        self.pending = PendingDrift(
            drift.drift_id,
            drift.model_version,
            drift.detector,
            drift.feature,
            drift.statistic,
            drift.threshold,
            now_ms,
            change_ms,
            detected_ms,
            performance,
            supersedes,
        )
        return Decision(None, "", dropped=replaced)

    def on_pending(self, change_ms: int | None, labels: LabelLedger, now_ms: int) -> Decision:
        """The request of the pending drift, once its post-drift rows are there.

        `change_ms` is the engine's estimate of the change point from the error
        stream, None while it shows no change; the detector's window start stands in.
        """
        pending = self.pending
        if pending is None:
            return Decision(None, "no drift pending")
        blocked = self._blocked(now_ms, drift=True)
        if blocked:
            return Decision(None, blocked)
        unconfirmed = not pending.performance and change_ms is None
        if unconfirmed and not self._config.data_drift_retrains:
            if now_ms - pending.since_ms < self._config.post_drift_wait_ms:
                return Decision(None, "no rise in the error stream yet")
            self.pending = None
            return Decision(
                None, "data drift without a rise in error: no training", pending.drift_id
            )
        start_ms = pending.detector_change_ms if change_ms is None else change_ms
        post_drift = labels.since(start_ms)
        latest = labels.latest_ms
        caught_up = latest is not None and latest >= pending.detected_event_ms
        window = common_pb2.DataWindow()
        if caught_up and post_drift >= self._config.min_post_drift_rows and latest is not None:
            window.time_range.start.CopyFrom(timestamp(start_ms))
            window.time_range.end.CopyFrom(timestamp(latest + 1))
            source = "the error stream" if change_ms is not None else "the detector"
            what = f"{post_drift} labelled events since the change point (from {source})"
        elif now_ms - pending.since_ms >= self._config.post_drift_wait_ms:
            window.last_n = self._config.last_n
            what = (
                f"last {self._config.last_n} labelled rows "
                f"(only {post_drift} since the change point)"
            )
        elif not caught_up:
            return Decision(None, "the labels have not reached the detection yet")
        else:
            return Decision(None, f"{post_drift} labelled events since the change point so far")
        feature = f" on {pending.feature}" if pending.feature else ""
        request = events_pb2.TrainingRequested(
            request_id=derived_id(self.model, "drift", pending.drift_id),
            model=self.model,
            reason=(
                f"{pending.detector}{feature}: {pending.statistic:.4g} crossed "
                f"{pending.threshold:.4g} on v{pending.model_version}; training on {what}"
            ),
            trigger=events_pb2.TRAINING_TRIGGER_DRIFT,
            window=window,
            parent_drift_id=pending.drift_id,
            requested_at=timestamp(now_ms),
            requested_by=REQUESTED_BY,
            expected_labelled_rows=post_drift
            if window.HasField("time_range")
            else min(self._config.last_n, labels.total),
        )
        if pending.supersedes:
            request.reason += f"; supersedes request {pending.supersedes}"
        self.pending = None
        confirmed = window.HasField("time_range") and not unconfirmed
        return Decision(self._start(request, now_ms, confirmed), "")

    def on_label(self, labels: LabelLedger, has_champion: bool, now_ms: int) -> Decision:
        """A bootstrap request when there is no champion and enough labelled events."""
        if has_champion:
            return Decision(None, "a champion exists")
        if labels.total < self._config.bootstrap_min_labels:
            return Decision(None, f"{labels.total} labelled events so far")
        blocked = self._blocked(now_ms, drift=False)
        if blocked:
            return Decision(None, blocked)
        self.bootstrap_attempts += 1
        request = events_pb2.TrainingRequested(
            request_id=derived_id(self.model, "bootstrap", self.bootstrap_attempts),
            model=self.model,
            reason=(
                f"no champion yet and {labels.total} labelled events: "
                f"first model from the last {self._config.last_n} labelled rows"
            ),
            trigger=events_pb2.TRAINING_TRIGGER_BOOTSTRAP,
            window=common_pb2.DataWindow(last_n=self._config.last_n),
            requested_at=timestamp(now_ms),
            requested_by=REQUESTED_BY,
            expected_labelled_rows=min(self._config.last_n, labels.total),
        )
        return Decision(self._start(request, now_ms), "")

    def _start(
        self, request: events_pb2.TrainingRequested, now_ms: int, confirmed: bool = True
    ) -> events_pb2.TrainingRequested:
        self.in_flight = InFlight(request.request_id, request.trigger, now_ms, confirmed)
        self.last_request_ms = now_ms
        self.last_trigger = request.trigger
        return request

    def on_outcome(self, request_id: str, *, registered: bool = False) -> bool:
        """The trainer or the registry answered; True when it answered the request in
        flight. A registered bootstrap stays in flight until its promotion (the
        first version becomes champion): `models.promoted` may reach drift after
        `models.registered`, and a second bootstrap must not start in between."""
        if self.in_flight is None or self.in_flight.request_id != request_id:
            return False
        if not (registered and self.in_flight.trigger == events_pb2.TRAINING_TRIGGER_BOOTSTRAP):
            self.in_flight = None
        return True

    def on_promoted(self) -> None:
        # A new champion: what was pending was about the old one.
        self.in_flight = None
        self.pending = None

    def to_json(self) -> dict[str, Any]:
        flight = self.in_flight
        return {
            "in_flight": None
            if flight is None
            else [flight.request_id, flight.trigger, flight.since_ms, flight.confirmed],
            "pending": None if self.pending is None else self.pending.to_json(),
            "last_request_ms": self.last_request_ms,
            "last_trigger": self.last_trigger,
            "bootstrap_attempts": self.bootstrap_attempts,
        }

    def load(self, data: dict[str, Any]) -> None:
        flight = data["in_flight"]
        self.in_flight = None if flight is None else InFlight(*flight)
        pending = data["pending"]
        self.pending = None if pending is None else PendingDrift.from_json(pending)
        self.last_request_ms = data["last_request_ms"]
        # State written before the trigger was kept: treat its last request as a
        # drift's, which holds back as much as the cooldown always did.
        self.last_trigger = int(data.get("last_trigger", events_pb2.TRAINING_TRIGGER_DRIFT))
        self.bootstrap_attempts = int(data["bootstrap_attempts"])
