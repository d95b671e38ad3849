"""Predictions meet their true labels by event id, whichever arrives first.

The side that arrives first waits, for at most `ttl_ms` of service time and at
most `max_pending` entries (the oldest go first). Event ids that were joined
are remembered for as long, with the class their prediction said, so a
replayed or duplicated prediction or label does not count twice, and a label
correction can re-score the prediction it joined.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class PredictionSeen:
    """What the join and the detectors need from a `Prediction`."""

    event_id: str
    model: str
    version: int
    predicted: int
    event_time_ms: int
    features: dict[str, float | str] = field(default_factory=dict)


@dataclass(frozen=True)
class LabelSeen:
    """A true label, inline on an `Observation` or from a late `Label`; a
    `correction` replaces the label its event was given before."""

    event_id: str
    model: str
    label: int
    event_time_ms: int
    correction: bool = False


@dataclass(frozen=True)
class Joined:
    """A prediction with its true label: one bit of the error stream."""

    event_id: str
    model: str
    version: int
    error: int
    event_time_ms: int


@dataclass(frozen=True)
class Rescored:
    """A joined prediction's error bit after a label correction; `error` is None
    when the prediction is no longer known (joined before its class was kept)."""

    event_id: str
    error: int | None


@dataclass
class JoinStats:
    joined: int = 0
    duplicates: int = 0
    expired_predictions: int = 0
    expired_labels: int = 0


class Joiner:
    def __init__(self, ttl_ms: int, max_pending: int) -> None:
        self._ttl_ms = ttl_ms
        self._max_pending = max_pending
        # event id -> (arrived at, the waiting side); insertion order is arrival order.
        self._predictions: OrderedDict[str, tuple[int, PredictionSeen]] = OrderedDict()
        self._labels: OrderedDict[str, tuple[int, LabelSeen]] = OrderedDict()
        # event id -> (joined at, the class its prediction said, when known).
        self._done: OrderedDict[str, tuple[int, int | None]] = OrderedDict()
        self.stats = JoinStats()

    @property
    def pending(self) -> tuple[int, int]:
        """How many predictions and labels are waiting for their other half."""
        return len(self._predictions), len(self._labels)

    def seen_prediction(self, event_id: str) -> bool:
        return event_id in self._predictions or event_id in self._done

    def add_prediction(self, prediction: PredictionSeen, now_ms: int) -> Joined | None:
        if self.seen_prediction(prediction.event_id):
            self.stats.duplicates += 1
            return None
        waiting = self._labels.pop(prediction.event_id, None)
        if waiting is None:
            self._predictions[prediction.event_id] = (now_ms, prediction)
            self._bound(self._predictions)
            return None
        return self._join(prediction, waiting[1], now_ms)

    def add_label(self, label: LabelSeen, now_ms: int) -> Joined | None:
        if label.event_id in self._labels or label.event_id in self._done:
            self.stats.duplicates += 1
            return None
        waiting = self._predictions.pop(label.event_id, None)
        if waiting is None:
            self._labels[label.event_id] = (now_ms, label)
            self._bound(self._labels)
            return None
        return self._join(waiting[1], label, now_ms)

    def correct(self, label: LabelSeen) -> Rescored | None:
        """Replace the label of an event the join holds: a waiting label takes the
        new value (None comes back: nothing joined yet); a joined prediction is
        re-scored. None as well when the join knows no label of this event."""
        waiting = self._labels.get(label.event_id)
        if waiting is not None:
            self._labels[label.event_id] = (waiting[0], label)
            return None
        done = self._done.get(label.event_id)
        if done is None:
            return None
        predicted = done[1]
        error = None if predicted is None else int(predicted != label.label)
        return Rescored(label.event_id, error)

    def knows_label(self, event_id: str) -> bool:
        """Whether a label of this event waits or was joined."""
        return event_id in self._labels or event_id in self._done

    def _join(self, prediction: PredictionSeen, label: LabelSeen, now_ms: int) -> Joined:
        self._done[prediction.event_id] = (now_ms, prediction.predicted)
        self._bound(self._done)
        self.stats.joined += 1
        return Joined(
            prediction.event_id,
            prediction.model,
            prediction.version,
            int(prediction.predicted != label.label),
            prediction.event_time_ms,
        )

    def _bound(self, entries: OrderedDict[str, Any]) -> None:
        while len(entries) > self._max_pending:
            entries.popitem(last=False)

    def expire(self, now_ms: int) -> None:
        """Forget what waited longer than the time-to-live."""
        horizon = now_ms - self._ttl_ms
        self.stats.expired_predictions += _drop_before(self._predictions, horizon)
        self.stats.expired_labels += _drop_before(self._labels, horizon)
        done = self._done
        while done and next(iter(done.values()))[0] < horizon:
            done.popitem(last=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "predictions": [
                [at, p.event_id, p.model, p.version, p.predicted, p.event_time_ms]
                for at, p in self._predictions.values()
            ],
            "labels": [
                [at, x.event_id, x.model, x.label, x.event_time_ms]
                for at, x in self._labels.values()
            ],
            "done": [[event_id, at, predicted] for event_id, (at, predicted) in self._done.items()],
        }

    def load(self, data: dict[str, Any]) -> None:
        for at, event_id, model, version, predicted, event_time in data["predictions"]:
            self._predictions[event_id] = (
                at,
                PredictionSeen(event_id, model, version, predicted, event_time),
            )
        for at, event_id, model, label, event_time in data["labels"]:
            self._labels[event_id] = (at, LabelSeen(event_id, model, label, event_time))
        for event_id, at, *predicted in data["done"]:
            # States saved before the predicted class was kept have none.
            self._done[event_id] = (at, predicted[0] if predicted else None)


def _drop_before(entries: OrderedDict[str, tuple[int, Any]], horizon: int) -> int:
    dropped = 0
    while entries and next(iter(entries.values()))[0] < horizon:
        entries.popitem(last=False)
        dropped += 1
    return dropped
