"""A JSONL stream read as the loop would see it: validated, then featurised point-in-time.

Each line is the JSON a producer sends to `events.raw`: an observation (with the
feature set's entity, timestamp and fields, and usually the label) or a late
label (`event_id` and the label, no entity). The ingestion service's validator
judges every line, so a line the stack would dead-letter stops the backtest,
naming the line and the field. The feature store's `FeatureMath` then computes
each observation's aggregates just before it, in file order, as the store
applies them: training rows and serving rows are the same numbers.

An observation that never gets a label only feeds the aggregates (history):
it is neither scored nor counted. A duplicate event id, or an event older than
the store's grace horizon, is skipped as the store would skip it, and counted;
so is a label whose observation is not in the file.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from driftloop_core.feature_math import EntityState, FeatureMath, Outcome
from driftloop_core.featureset import FeatureSet
from driftloop_ingestion.rules import Rejection
from driftloop_ingestion.validation import Validator, ValidLabel, ValidObservation
from driftloop_trainer.training import MISSING_CATEGORY, is_categorical

# A backtest replays the past (or a synthetic future): event times are not
# checked against today's clock.
_ANY_TIME = timedelta(days=365 * 1000)

Features = dict[str, float | str]


class StreamError(ValueError):
    """A line the loop would refuse; names the file, the line and the field."""

    def __init__(self, path: Path | str, line: int, field: str, reason: str) -> None:
        where = f"{path} line {line}" + (f", field {field!r}" if field else "")
        super().__init__(f"{where}: {reason}")
        self.line = line
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class BacktestEvent:
    """One labelled observation, with the model's features as serving would see them."""

    index: int
    event_id: str
    event_time_ms: int
    features: Features
    label: int


@dataclass(frozen=True)
class Sent:
    """An observation as a producer sends it (no label), and the index of its
    scored event (None for history)."""

    entity_id: str
    event_id: str
    event_time_ms: int
    values: Mapping[str, float | int | str | bool]
    index: int | None


@dataclass
class Stream:
    events: list[BacktestEvent]
    lines: int = 0
    # Every applied observation in file order, for a replay through the stack.
    sent: list[Sent] = field(default_factory=list)
    history: int = 0  # observations without a label: aggregates only
    skipped: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, object]:
        labels = [e.label for e in self.events]
        return {
            "lines": self.lines,
            "events": len(self.events),
            "history_events": self.history,
            "skipped": dict(self.skipped),
            "positive_rate": round(sum(labels) / len(labels), 4) if labels else None,
        }


def model_features(featureset: FeatureSet, row: Mapping[str, object]) -> Features:
    """The model's inputs from a feature row: numbers as float (NaN when absent),
    categories as text (the trainer's missing category when absent)."""
    out: Features = {}
    for name in featureset.model.features:
        value = row.get(name)
        if is_categorical(featureset, name):
            out[name] = MISSING_CATEGORY if value is None else str(value)
        else:
            out[name] = math.nan if value is None else float(value)  # type: ignore[arg-type]
    return out


def read_stream(lines: Iterable[str], featureset: FeatureSet, source: Path | str) -> Stream:
    """Validate and featurise every line; raises `StreamError` on the first bad one."""
    validator = Validator(featureset, max_future=_ANY_TIME)
    observations: list[tuple[int, ValidObservation]] = []
    labels: dict[str, int] = {}
    count = 0
    for number, text in enumerate(lines, start=1):
        count = number
        if not text.strip():
            continue
        checked = validator.validate_json(text, origin=(str(source), number))
        if isinstance(checked, Rejection):
            raise StreamError(source, number, checked.field, checked.reason)
        if isinstance(checked, ValidLabel):
            labels[checked.event_id] = checked.label
        else:
            observations.append((number, checked))
            if checked.label is not None:
                labels.setdefault(checked.event_id, checked.label)
    observed = {seen.event_id for _, seen in observations}
    orphans = sum(1 for event_id in labels if event_id not in observed)
    math_ = FeatureMath(featureset)
    states: dict[str, EntityState] = {}
    stream = Stream([], lines=count)
    if orphans:
        stream.skipped["label_without_observation"] = orphans
    ingested: set[str] = set()
    for _number, seen in observations:
        # Ingestion acknowledges an id it has seen as a duplicate, however old.
        outcome = Outcome.DUPLICATE if seen.event_id in ingested else None
        ingested.add(seen.event_id)
        state = states.setdefault(seen.entity_id, EntityState())
        row = math_.point_in_time_row(state, seen.event_time_ms, seen.values)
        if outcome is None:
            outcome = math_.apply(state, seen.event_id, seen.event_time_ms, seen.values)
        if outcome is not Outcome.APPLIED:
            stream.skipped[outcome.value] = stream.skipped.get(outcome.value, 0) + 1
            continue
        label = labels.get(seen.event_id)
        index = None if label is None else len(stream.events)
        stream.sent.append(
            Sent(seen.entity_id, seen.event_id, seen.event_time_ms, seen.values, index)
        )
        if label is None:
            stream.history += 1
            continue
        stream.events.append(
            BacktestEvent(
                len(stream.events),
                seen.event_id,
                seen.event_time_ms,
                model_features(featureset, row),
                label,
            )
        )
    return stream


def load_stream(path: Path, featureset: FeatureSet) -> Stream:
    with path.open(encoding="utf-8") as handle:
        return read_stream(handle, featureset, path)
