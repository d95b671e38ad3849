"""river's online learners on the same events: the line Driftloop is measured against.

`ARFClassifier` (adaptive random forest), `HoeffdingAdaptiveTreeClassifier` and
a scaled `LogisticRegression` (numbers standardised, categories one-hot) run
prequentially on the backtest's events and features: each event is
predicted first, and learned once its label arrives, after the same label
delay the loop gets, so neither side sees a label earlier than the other.

An event that a model cannot answer yet (river before its first label,
Driftloop before its first version) is counted as a guess of the majority
class among the labels arrived so far (0 when none has), so every line is
scored on every event.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Callable, Sequence
from typing import Any

from driftloop_cli.backtest.stream import BacktestEvent, Features
from driftloop_cli.demo.timeline import Timeline

UNANSWERED_RULE = (
    "an event answered by no model yet (river before its first label, Driftloop before "
    "its first version) counts as a guess of the majority class of the labels arrived so far"
)
MODELS = ("arf", "hat", "lr")
# Events after the change that the "after the change" figure covers.
AFTER_CHANGE = 1000


def _river_features(features: Features) -> dict[str, Any]:
    # river takes a missing value as an absent key, not NaN.
    return {
        k: v
        for k, v in features.items()
        if not (isinstance(v, float) and math.isnan(v)) and v != ""
    }


def scaled_logistic_regression() -> Any:
    """Standardised numbers and one-hot categories into a logistic regression."""
    from river import compose, linear_model, preprocessing

    numbers = compose.SelectType(int, float) | preprocessing.StandardScaler()
    categories = compose.SelectType(str) | preprocessing.OneHotEncoder()
    return (numbers + categories) | linear_model.LogisticRegression()


def _models(seed: int) -> dict[str, Any]:
    from river import forest, tree

    return {
        "arf": forest.ARFClassifier(seed=seed),
        "hat": tree.HoeffdingAdaptiveTreeClassifier(seed=seed),
        "lr": scaled_logistic_regression(),
    }


def majority_guesses(events: Sequence[BacktestEvent], delay_events: int) -> list[int]:
    """For each event, the majority class of the labels arrived before it (the
    label of event j arrives before event i when i - j >= delay_events)."""
    counts: Counter[int] = Counter()
    out = []
    arrived = 0
    for position in range(len(events)):
        while arrived < len(events) and position - arrived >= delay_events:
            counts[events[arrived].label] += 1
            arrived += 1
        out.append(counts.most_common(1)[0][0] if counts else 0)
    return out


def river_correct(
    events: Sequence[BacktestEvent],
    delay_events: int,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> dict[str, list[int]]:
    """1/0 per event for each river model, prequential with delayed labels."""
    models = _models(seed)
    guesses = majority_guesses(events, delay_events)
    correct: dict[str, list[int]] = {name: [] for name in models}
    waiting: deque[tuple[int, dict[str, Any], int]] = deque()
    for position, (event, guess) in enumerate(zip(events, guesses, strict=True)):
        while waiting and position - waiting[0][0] >= delay_events:
            _, x_old, y_old = waiting.popleft()
            for model in models.values():
                model.learn_one(x_old, y_old)
        x = _river_features(event.features)
        for name, model in models.items():
            predicted = model.predict_one(x)
            correct[name].append(int((guess if predicted is None else predicted) == event.label))
        waiting.append((position, x, event.label))
        if progress is not None and position % 100 == 99:
            progress(position + 1)
    return correct


def driftloop_correct(
    events: Sequence[BacktestEvent], timeline: Timeline, delay_events: int
) -> list[int]:
    """1/0 per event for Driftloop, unanswered events by the majority rule."""
    guesses = majority_guesses(events, delay_events)
    served = {s.index: s for s in timeline.served}
    out = []
    for event, guess in zip(events, guesses, strict=True):
        seen = served.get(event.index)
        predicted = seen.predicted if seen is not None and seen.status == "ok" else guess
        out.append(int(predicted == event.label))
    return out


def _mean(values: Sequence[int]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def compare(
    events: Sequence[BacktestEvent],
    timeline: Timeline,
    delay_events: int,
    *,
    windows: int = 10,
    seed: int = 0,
    change_at: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Overall and per-window accuracy of Driftloop, ARF, HAT and LR on every
    event; with `change_at`, also over the `AFTER_CHANGE` events from it."""
    lines = {"driftloop": driftloop_correct(events, timeline, delay_events)}
    lines |= river_correct(events, delay_events, seed, progress)
    size = max(1, math.ceil(len(events) / windows))
    per_window = []
    for start in range(0, len(events), size):
        end = min(start + size, len(events))
        row: dict[str, Any] = {"from_event": start, "to_event": end - 1}
        row |= {name: _mean(values[start:end]) for name, values in lines.items()}
        per_window.append(row)
    return {
        "models": {
            "driftloop": "what the loop served: champion or online learner, by recent accuracy",
            "arf": "river forest.ARFClassifier, prequential",
            "hat": "river tree.HoeffdingAdaptiveTreeClassifier, prequential",
            "lr": "river linear_model.LogisticRegression, standardised, prequential",
        },
        "label_delay_events": delay_events,
        "unanswered": UNANSWERED_RULE,
        "overall": {name: _mean(values) for name, values in lines.items()},
        "after_change": None
        if change_at is None
        else {
            name: _mean(values[change_at : change_at + AFTER_CHANGE])
            for name, values in lines.items()
        },
        "windows": per_window,
        "series": {name: _rolling(values) for name, values in lines.items()},
    }


def _rolling(correct: Sequence[int], window: int = 200, points: int = 300) -> list[list[float]]:
    """[event, accuracy of the last `window` events] pairs, thinned to about `points`."""
    step = max(1, len(correct) // points)
    out: list[list[float]] = []
    total = 0
    for i, value in enumerate(correct):
        total += value
        if i >= window:
            total -= correct[i - window]
        if i >= min(window, 20) - 1 and (i % step == 0 or i == len(correct) - 1):
            out.append([i, round(total / min(i + 1, window), 4)])
    return out
