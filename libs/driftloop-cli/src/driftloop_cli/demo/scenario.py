"""The demo's payments: a seeded stream whose fraud pattern changes at a known event.

The demo needs a stream where the loop has something to learn and something to
lose: the online aggregates must matter to the model, and a drift must make a
good model clearly wrong until it is retrained. Each event belongs to one
behaviour (everyday spending, or an episode of several payments by one
customer), and its label is a fixed rule (a concept) over the features the
model sees, computed exactly as the feature store computes them (events of the
same customer with `t - window <= time < t`), with a little label noise:

- before the drift, fraud is account takeover: the third and later payment
  within ten minutes, each above the customer's mean of the last hour;
- after it, fraudsters switch to card testing (runs of tiny web payments) and
  night-time cash-outs (one large ATM withdrawal between 00 and 04 h), while
  bursts of larger payments are now ordinary shopping sprees.

Event times are offsets in milliseconds from the first event; the driver
anchors them to the wall clock. The stream is already in its steady state when
scoring starts: an hour of history (the longest window) comes first, sent but
never scored nor labelled, so the first model and its reference distributions
see full aggregate windows, as every later event does. Episodes space a customer's payments minutes
apart in event time, which is dozens of other events in between, so the
feature store has applied one before the next is scored.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from driftloop_core.feature_math import window_start

ScenarioKind = Literal["drift", "stationary"]
SCENARIO_KINDS: tuple[ScenarioKind, ...] = ("drift", "stationary")

MEAN_WINDOW_MS = 60 * 60 * 1000  # amount_mean_1h
COUNT_WINDOW_MS = 10 * 60 * 1000  # txn_count_10m
# Both windows' tiles (1 min, 10 s) divide a minute: a scenario sent from a whole
# minute on has, in the feature store, the aggregates computed here on offsets.
START_ALIGN_MS = 60 * 1000

# Event time before the first scored payment: the longest aggregate window.
HISTORY_S = 3600.0
# Everyday spending: each customer pays about every 20 minutes of event time.
BACKGROUND_INTERVAL_S = 1200.0
_GAP_SHAPE = 4.0
# Episodes (fraud runs) start at a steadier pace than Poisson arrivals: with
# Poisson clumps, a few hundred events hold visibly more or fewer bursts than
# the next few hundred, and the drift detectors' PSI on the aggregates would
# see that noise as a change of distribution.
_EPISODE_GAP_SHAPE = 8.0
# Share of event time's day spent on each hour, for everyday payments.
_DAY_WEIGHTS = np.array([0.2] * 6 + [0.5] * 2 + [1.0] * 14 + [0.5] * 2)
_DAY_WEIGHTS = _DAY_WEIGHTS / _DAY_WEIGHTS.sum()


class ScenarioError(ValueError):
    """A scenario option out of range; the message names the option and the rule."""


@dataclass(frozen=True)
class ScenarioConfig:
    kind: ScenarioKind = "drift"
    seed: int = 7
    events: int = 4800
    # Fraction of the events before the drift onset (drift scenario only).
    drift_at: float = 0.5
    customers: int = 600
    # Share of labels flipped at random.
    label_noise: float = 0.02

    def validate(self) -> None:
        if self.kind not in SCENARIO_KINDS:
            raise ScenarioError(f"scenario: must be one of {list(SCENARIO_KINDS)}, got {self.kind}")
        if self.events < 200:
            raise ScenarioError(f"events: must be >= 200, got {self.events}")
        if not 0.1 <= self.drift_at <= 0.9:
            raise ScenarioError(f"drift_at: must be between 0.1 and 0.9, got {self.drift_at}")
        if self.customers < 20:
            raise ScenarioError(f"customers: must be >= 20, got {self.customers}")
        if not 0.0 <= self.label_noise < 0.5:
            raise ScenarioError(f"label_noise: must be in [0, 0.5), got {self.label_noise}")


@dataclass(frozen=True)
class DemoEvent:
    """One payment, its point-in-time aggregates and its true label."""

    index: int
    event_id: str
    customer_id: str
    offset_ms: int
    amount: float
    channel: str
    hour: int
    amount_mean_1h: float | None
    txn_count_10m: int
    is_fraud: int
    pattern: str

    def observation(self, start_ms: int) -> dict[str, object]:
        """The raw JSON observation for `events.raw` (no label: it comes later)."""
        return {
            "event_id": self.event_id,
            "customer_id": self.customer_id,
            "ts": start_ms + self.offset_ms,
            "amount": self.amount,
            "channel": self.channel,
            "hour": self.hour,
        }

    def label(self) -> dict[str, object]:
        """The late label for `events.raw`."""
        return {"event_id": self.event_id, "is_fraud": self.is_fraud}


@dataclass(frozen=True)
class Scenario:
    config: ScenarioConfig
    events: tuple[DemoEvent, ...]
    # Index of the first event under the new concept; None when stationary.
    onset: int | None
    span_ms: int
    # The hour of payments before the first scored one: sent first, never
    # scored nor labelled, so that every aggregate window is full from the start.
    history: tuple[DemoEvent, ...] = ()

    def __len__(self) -> int:
        return len(self.events)

    def __iter__(self) -> Iterator[DemoEvent]:
        return iter(self.events)

    def fraud_rate(self, start: int = 0, end: int | None = None) -> float:
        chosen = self.events[start:end]
        return sum(e.is_fraud for e in chosen) / len(chosen) if chosen else 0.0

    def summary(self) -> dict[str, object]:
        onset = self.onset if self.onset is not None else len(self.events)
        out: dict[str, object] = {
            "kind": self.config.kind,
            "seed": self.config.seed,
            "events": len(self.events),
            "customers": self.config.customers,
            "label_noise": self.config.label_noise,
            "onset_event": self.onset,
            "history_events": len(self.history),
            "event_time_span_s": round(self.span_ms / 1000, 1),
            "fraud_rate_before": round(self.fraud_rate(0, onset), 4),
        }
        if self.onset is not None:
            out["fraud_rate_after"] = round(self.fraud_rate(onset), 4)
        return out


# --- the two concepts -----------------------------------------------------------


def takeover_concept(amount: float, channel: str, hour: int, mean: float | None, count: int) -> int:
    """Before the drift: the third and later payment within 10 minutes, above the hourly mean."""
    return int(count >= 2 and mean is not None and amount > mean)


def new_tactics_concept(
    amount: float, channel: str, hour: int, mean: float | None, count: int
) -> int:
    """After the drift: card testing (tiny web payments in a run) or a night cash-out."""
    card_testing = channel == "web" and amount < 5.0 and count >= 1
    cash_out = (
        channel == "atm" and hour <= 4 and amount >= 200.0 and (mean is None or amount >= 3 * mean)
    )
    return int(card_testing or cash_out)


Concept = Callable[[float, str, int, float | None, int], int]


# --- behaviours -------------------------------------------------------------------


@dataclass
class _Draft:
    time_s: float
    customer: int
    amount: float
    channel: str
    hour: int
    pattern: str
    phase: int


@dataclass
class _Phase:
    """Which behaviours occur, as episodes per customer and event-hour."""

    number: int
    episodes: dict[str, float] = field(default_factory=dict)


def _money(value: float) -> float:
    return round(max(value, 0.5), 2)


def _cash(value: float) -> float:
    return float(max(20, round(value / 20.0) * 20))


def _everyday(rng: np.random.Generator, base: float) -> tuple[float, str, int]:
    channel = str(rng.choice(["web", "pos", "atm"], p=[0.45, 0.45, 0.10]))
    hour = int(rng.choice(24, p=_DAY_WEIGHTS))
    if channel == "atm":
        return _cash(base * rng.uniform(1.0, 3.0)), channel, hour
    return _money(base * rng.lognormal(0.0, 0.5)), channel, hour


def _episode(
    rng: np.random.Generator, pattern: str, base: float, start_s: float
) -> list[tuple[float, float, str, int]]:
    """(time, amount, channel, hour) of each payment of one episode."""
    out: list[tuple[float, float, str, int]] = []
    if pattern == "cash_out":
        return [(start_s, _cash(rng.uniform(300, 800)), "atm", int(rng.integers(0, 5)))]
    if pattern == "takeover":
        count, spacing = int(rng.integers(3, 8)), (90.0, 180.0)
        first = base * rng.uniform(2.5, 4.0)
        growth = rng.uniform(1.2, 1.5)
    elif pattern == "card_testing":
        count, spacing = int(rng.integers(4, 9)), (60.0, 150.0)
    elif pattern == "spree":
        count, spacing = int(rng.integers(3, 7)), (90.0, 180.0)
        first = base * rng.uniform(1.2, 2.0)
        growth = rng.uniform(1.1, 1.3)
    else:
        raise ValueError(f"unknown pattern {pattern}")
    time_s = start_s
    hour = int(rng.choice(24, p=_DAY_WEIGHTS))
    for j in range(count):
        if pattern == "card_testing":
            amount, channel = _money(rng.uniform(0.5, 4.5)), "web"
        else:
            amount = _money(first * growth**j)
            channel = str(rng.choice(["web", "pos"], p=[0.7, 0.3]))
        out.append((time_s, amount, channel, hour))
        time_s += rng.uniform(*spacing)
    return out


def _phase_drafts(
    rng: np.random.Generator,
    phase: _Phase,
    bases: np.ndarray,
    pace: np.ndarray,
    start_s: float,
    wanted: int,
    *,
    history_s: float = 0.0,
) -> list[_Draft]:
    """The drafts of one phase from `start_s` on: every one before `history_s`,
    then the next `wanted` by time.

    Everyday payments come at each customer's own, fairly regular pace (gamma
    gaps), not as Poisson arrivals: two within seconds would be a coincidence
    the feature store might not have applied yet when the second is scored.
    `pace` holds each customer's next everyday payment and carries over from one
    phase to the next, so a phase boundary is no visible seam in the aggregates.
    """
    customers = len(bases)
    background_rate = customers / BACKGROUND_INTERVAL_S
    end_s = max(start_s, history_s) + wanted / background_rate
    drafts: list[_Draft] = []
    for c in range(customers):
        t = float(pace[c])
        while t < end_s:
            amount, channel, hour = _everyday(rng, float(bases[c]))
            drafts.append(_Draft(t, c, amount, channel, hour, "everyday", phase.number))
            t += rng.gamma(_GAP_SHAPE, BACKGROUND_INTERVAL_S / _GAP_SHAPE)
        pace[c] = t
    for pattern, per_customer_hour in sorted(phase.episodes.items()):
        rate = per_customer_hour * customers / 3600.0
        t = start_s
        while True:
            t += rng.gamma(_EPISODE_GAP_SHAPE, 1.0 / (rate * _EPISODE_GAP_SHAPE))
            if t >= end_s:
                break
            c = int(rng.integers(customers))
            for when, amount, channel, hour in _episode(rng, pattern, float(bases[c]), t):
                drafts.append(_Draft(when, c, amount, channel, hour, pattern, phase.number))
    drafts.sort(key=lambda d: d.time_s)
    past = sum(1 for d in drafts if d.time_s < history_s)
    kept = drafts[: past + wanted]
    cut = kept[-1].time_s if kept else start_s
    # Everyday payments generated past the cut are not lost: each customer's
    # first one is where the next phase picks up.
    for draft in reversed(drafts[len(kept) :]):
        if draft.pattern == "everyday" and draft.time_s > cut:
            pace[draft.customer] = min(pace[draft.customer], draft.time_s)
    return kept


_TAKEOVER_ERA = _Phase(1, {"takeover": 0.35})
_NEW_TACTICS = _Phase(2, {"card_testing": 0.18, "cash_out": 0.4})


def build_scenario(config: ScenarioConfig | None = None) -> Scenario:
    """The events of a scenario, the same for the same config."""
    config = config or ScenarioConfig()
    config.validate()
    rng = np.random.default_rng(config.seed)
    bases = np.clip(rng.lognormal(math.log(50.0), 0.6, config.customers), 5.0, 400.0)
    pace = rng.uniform(0.0, BACKGROUND_INTERVAL_S, config.customers)
    first = int(config.events * config.drift_at) if config.kind == "drift" else config.events
    # One takeover era for the history and the scored events before the onset,
    # so episodes under way when scoring starts are not cut.
    era = _phase_drafts(rng, _TAKEOVER_ERA, bases, pace, 0.0, first, history_s=HISTORY_S)
    past = [d for d in era if d.time_s < HISTORY_S]
    drafts = era[len(past) :]
    onset: int | None = None
    if config.kind == "drift":
        onset = first
        drafts += _phase_drafts(
            rng, _NEW_TACTICS, bases, pace, drafts[-1].time_s, config.events - first
        )
    concepts: dict[int, Concept] = {1: takeover_concept, 2: new_tactics_concept}
    noise = rng.random(len(past) + len(drafts)) < config.label_noise
    prefix = f"demo-{config.kind[0]}{config.seed}"

    made: list[DemoEvent] = []
    seen: dict[int, tuple[list[int], list[float]]] = {}
    last_ms = -1
    for i, draft in enumerate([*past, *drafts]):
        offset_ms = max(round(draft.time_s * 1000), last_ms + 1)
        last_ms = offset_ms
        times, amounts = seen.setdefault(draft.customer, ([], []))
        mean, count = aggregates(times, amounts, offset_ms)
        truth = concepts[draft.phase](draft.amount, draft.channel, draft.hour, mean, count)
        index = i - len(past)
        made.append(
            DemoEvent(
                index=index,
                event_id=f"{prefix}-h{i:06d}" if index < 0 else f"{prefix}-{index:06d}",
                customer_id=f"cust-{draft.customer:04d}",
                offset_ms=offset_ms,
                amount=draft.amount,
                channel=draft.channel,
                hour=draft.hour,
                amount_mean_1h=mean,
                txn_count_10m=count,
                is_fraud=truth ^ int(noise[i]),
                pattern=draft.pattern,
            )
        )
        times.append(offset_ms)
        amounts.append(draft.amount)
    return Scenario(config, tuple(made[len(past) :]), onset, last_ms, tuple(made[: len(past)]))


def aggregates(times: list[int], amounts: list[float], as_of_ms: int) -> tuple[float | None, int]:
    """amount_mean_1h and txn_count_10m of one customer's earlier payments (times
    sorted), over `window_start(as_of, window) <= time < as_of`, as the feature store
    computes them when the scenario starts on a whole minute (`START_ALIGN_MS`)."""
    end = bisect.bisect_left(times, as_of_ms)
    start_mean = bisect.bisect_left(times, window_start(as_of_ms, MEAN_WINDOW_MS), hi=end)
    start_count = bisect.bisect_left(times, window_start(as_of_ms, COUNT_WINDOW_MS), hi=end)
    window = amounts[start_mean:end]
    mean = math.fsum(window) / len(window) if window else None
    return mean, end - start_count
