"""When a drift (or the lack of any model) becomes a training request.

Per model: at most one request in flight, until its outcome (`ModelRegistered`
or `TrainingFailed` with its request id), a promotion, or `in_flight_timeout`;
and a cooldown after each request. A drift asks for the events since the
detector's estimated change point when at least `min_post_drift_rows` labelled
events fall in that range, else for the last `last_n` labelled rows. With no
champion and `bootstrap_min_labels` labelled events, a `bootstrap` run is asked
for. Request ids derive from the drift id (or the model's bootstrap attempt),
so replaying the same inputs asks for the same run, which the trainer runs once.
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


@dataclass
class InFlight:
    request_id: str
    trigger: int
    since_ms: int


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


class RetrainPolicy:
    """The retrain state of one model."""

    def __init__(self, model: str, config: PolicyConfig) -> None:
        self.model = model
        self._config = config
        self.in_flight: InFlight | None = None
        self.last_request_ms: int | None = None
        self.bootstrap_attempts = 0

    def _blocked(self, now_ms: int) -> str:
        if self.in_flight is not None:
            if now_ms - self.in_flight.since_ms < self._config.in_flight_timeout_ms:
                return f"request {self.in_flight.request_id} is in flight"
            self.in_flight = None
        if (
            self.last_request_ms is not None
            and now_ms - self.last_request_ms < self._config.cooldown_ms
        ):
            return "cooling down after the last request"
        return ""

    def on_drift(
        self, drift: events_pb2.DriftDetected, change_ms: int, labels: LabelLedger, now_ms: int
    ) -> Decision:
        blocked = self._blocked(now_ms)
        if blocked:
            return Decision(None, blocked)
        window = common_pb2.DataWindow()
        post_drift = labels.since(change_ms)
        latest = labels.latest_ms
        if post_drift >= self._config.min_post_drift_rows and latest is not None:
            window.time_range.start.CopyFrom(timestamp(change_ms))
            window.time_range.end.CopyFrom(timestamp(latest + 1))
            what = f"{post_drift} labelled events since the change point"
        else:
            window.last_n = self._config.last_n
            what = (
                f"last {self._config.last_n} labelled rows "
                f"(only {post_drift} since the change point)"
            )
        feature = f" on {drift.feature}" if drift.feature else ""
        request = events_pb2.TrainingRequested(
            request_id=derived_id(self.model, "drift", drift.drift_id),
            model=self.model,
            reason=(
                f"{drift.detector}{feature}: {drift.statistic:.4g} crossed {drift.threshold:.4g} "
                f"on v{drift.model_version}; training on {what}"
            ),
            trigger=events_pb2.TRAINING_TRIGGER_DRIFT,
            window=window,
            parent_drift_id=drift.drift_id,
            requested_at=timestamp(now_ms),
            requested_by=REQUESTED_BY,
        )
        return Decision(self._start(request, now_ms), "")

    def on_label(self, labels: LabelLedger, has_champion: bool, now_ms: int) -> Decision:
        """A bootstrap request when there is no champion and enough labelled events."""
        if has_champion:
            return Decision(None, "a champion exists")
        if labels.total < self._config.bootstrap_min_labels:
            return Decision(None, f"{labels.total} labelled events so far")
        blocked = self._blocked(now_ms)
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
        )
        return Decision(self._start(request, now_ms), "")

    def _start(
        self, request: events_pb2.TrainingRequested, now_ms: int
    ) -> events_pb2.TrainingRequested:
        self.in_flight = InFlight(request.request_id, request.trigger, now_ms)
        self.last_request_ms = now_ms
        return request

    def on_outcome(self, request_id: str) -> bool:
        """The trainer or the registry answered; True when it ended the request in flight."""
        if self.in_flight is not None and self.in_flight.request_id == request_id:
            self.in_flight = None
            return True
        return False

    def on_promoted(self) -> None:
        self.in_flight = None

    def to_json(self) -> dict[str, Any]:
        flight = self.in_flight
        return {
            "in_flight": None
            if flight is None
            else [flight.request_id, flight.trigger, flight.since_ms],
            "last_request_ms": self.last_request_ms,
            "bootstrap_attempts": self.bootstrap_attempts,
        }

    def load(self, data: dict[str, Any]) -> None:
        flight = data["in_flight"]
        self.in_flight = None if flight is None else InFlight(flight[0], flight[1], flight[2])
        self.last_request_ms = data["last_request_ms"]
        self.bootstrap_attempts = int(data["bootstrap_attempts"])
