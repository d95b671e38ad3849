"""Judging a rollout: is the candidate better than the champion on labelled live events?

While a rollout is open, inference scores every event with the champion (its
normal answer) and with the candidate (a shadow answer that never reaches the
caller). Once an event also has its true label it is a *paired* event, and
only those count: both versions answered the same inputs, so the comparison is
not muddied by which traffic each one saw.

The rule (McNemar's pairing, judged sequentially):

- Only events exactly one of the two got right say anything about which is
  better: `b` (only the champion right) and `c` (only the candidate right).
  Among them, a candidate as good as the champion is right half the time.
- A Wald sequential probability ratio test of H0 p = 0.5 against
  H1 p = 0.5 + effect on those events ("better"), and its mirror
  H1' p = 0.5 - effect ("worse"), both at the policy's `alpha` and `beta`:
  promote when the "better" log likelihood ratio reaches log((1 - beta) / alpha);
  reject when the "worse" one does; reject as "no better than the champion"
  when the "better" one falls to log(beta / (1 - alpha)).
- No verdict before `min_paired` paired events (a handful of lucky events must
  not decide), and a rejection ("time ran out") once `max_duration` has passed
  since the rollout started without a verdict.
- The latency guard: a trial's candidate found better is still rejected when
  the policy has a latency budget and the p99 of its shadow scoring times is
  over it. Being right more often does not pay for every caller waiting longer.

Two kinds of rollout are judged by the same rule. A trial puts a new candidate
beside the champion. A watch follows a promotion: the previous champion
shadows the new one, as the rollout's "candidate", and a verdict that it did
better (PROMOTE) tells the registry to roll back. The latency budget does not
apply to a watch: how fast the old version answers does not make the new one
any better, and the old one served every caller until just now. Only the
wording of the reasons differs.

The candidate's latency is what inference measured for each shadow answer
(its wait in the batching queue and its run). The judge keeps the most recent
`LATENCY_WINDOW` of them per rollout: bounded memory, and the recent ones say
how the candidate runs now, after its first calls warmed it up.

Each open rollout keeps the events it has seen part of (champion answer,
candidate answer, label) until the missing parts come, in any order, for at
most `ttl_ms` of service time and `max_pending` events (the oldest go first),
as the prediction/label join does. Events already counted are remembered as
long, so a duplicated prediction or label never counts twice.

Label corrections are not applied here: the first label an event got is the
one it is judged on (a correction can only be that first label).

Pure: no clock, no I/O. Every call is given the service time it runs at, and
the whole state is plain data (`to_json` / `load`).
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

# Unset policy fields (0 on the wire) take these.
DEFAULT_MIN_PAIRED = 200
DEFAULT_MAX_DURATION_MS = 24 * 3_600_000
DEFAULT_ALPHA = 0.05
DEFAULT_BETA = 0.2
DEFAULT_EFFECT = 0.1
# Rollouts kept at once (open or judged and not yet ended); the oldest go first.
MAX_ROLLOUTS = 8
# Rollout ids remembered after they ended, so a duplicated start does not reopen one.
ENDED_MEMORY = 256
# Shadow latencies kept per rollout (the most recent): what its p99 is taken over.
LATENCY_WINDOW = 2_000
# Fewer shadow latencies than this and the budget is not judged: there is no
# figure worth the name (an inference that sends no latency gives none at all),
# and a better candidate must not be rejected on nothing. Below 100 the p99 is
# the slowest answer itself, which errs on the callers' side.
MIN_LATENCY_SAMPLE = 20


# ---------------------------------------------------------------------- the rollout


@dataclass(frozen=True)
class RolloutPolicy:
    """How a rollout is judged (`RolloutPolicy` on the wire, defaults filled in)."""

    min_paired: int = DEFAULT_MIN_PAIRED
    max_duration_ms: int = DEFAULT_MAX_DURATION_MS
    alpha: float = DEFAULT_ALPHA
    beta: float = DEFAULT_BETA
    effect: float = DEFAULT_EFFECT
    # The candidate's shadow p99 above which a trial does not promote; 0: no budget.
    latency_budget_ms: float = 0.0

    def __post_init__(self) -> None:
        # Checked here so that a judge never runs on bounds that make no sense
        # (log of a negative number, or a "better" no event can ever show).
        if self.min_paired < 0:
            raise ValueError(f"min_paired must not be negative, got {self.min_paired}")
        if self.max_duration_ms <= 0:
            raise ValueError(f"max_duration must be positive, got {self.max_duration_ms} ms")
        # alpha + beta < 1 puts the upper bound above 0 and the lower one below.
        if not (0.0 < self.alpha < 1.0 and 0.0 < self.beta < 1.0 and self.alpha + self.beta < 1.0):
            raise ValueError(
                f"alpha and beta must lie in (0, 1) with alpha + beta < 1, "
                f"got {self.alpha} and {self.beta}"
            )
        if not 0.0 < self.effect < 0.5:
            raise ValueError(f"effect must lie in (0, 0.5), got {self.effect}")
        if not (math.isfinite(self.latency_budget_ms) and self.latency_budget_ms >= 0.0):
            raise ValueError(
                f"latency_budget must be a duration of at least 0, got {self.latency_budget_ms} ms"
            )

    @property
    def upper(self) -> float:
        """Where a test's log likelihood ratio accepts its alternative."""
        return math.log((1.0 - self.beta) / self.alpha)

    @property
    def lower(self) -> float:
        """Where the "better" test's log likelihood ratio accepts "no better"."""
        return math.log(self.beta / (1.0 - self.alpha))


class RolloutKind(Enum):
    """What a rollout tries (`RolloutKind` on the wire; unset reads as a trial)."""

    TRIAL = "trial"  # a new candidate against the champion
    WATCH = "watch"  # after a promotion: the previous champion against the new one


@dataclass(frozen=True)
class Rollout:
    """A candidate judged against the champion (`ModelRolloutStarted`). In a watch
    the candidate is the previous champion and the champion the new one."""

    rollout_id: str
    model: str
    candidate: int
    champion: int
    started_ms: int
    policy: RolloutPolicy = field(default_factory=RolloutPolicy)
    kind: RolloutKind = RolloutKind.TRIAL

    @property
    def deadline_ms(self) -> int:
        return self.started_ms + self.policy.max_duration_ms

    @property
    def latency_budget_ms(self) -> float | None:
        """The budget the candidate's shadow p99 is held to, if any (never in a watch)."""
        budget = self.policy.latency_budget_ms
        return budget if budget > 0 and self.kind is RolloutKind.TRIAL else None


@dataclass(frozen=True)
class ShadowSeen:
    """What the judge needs from a candidate's shadow `Prediction`."""

    rollout_id: str
    event_id: str
    model: str
    version: int
    predicted: int
    # The candidate's own scoring time for this answer; None when not measured.
    latency_ms: float | None = None


# ---------------------------------------------------------------------- figures and verdicts


class Rule(Enum):
    """Which bound ended the rollout."""

    BETTER = "better"
    WORSE = "worse"
    NOT_BETTER = "not_better"
    TIME_RAN_OUT = "time_ran_out"
    # Better, but its shadow p99 is over the latency budget: not promoted.
    OVER_LATENCY_BUDGET = "over_latency_budget"

    @property
    def promotes(self) -> bool:
        return self is Rule.BETTER


@dataclass
class Counts:
    """The running tallies of one rollout's paired events."""

    paired: int = 0
    champion_errors: int = 0
    candidate_errors: int = 0
    champion_only_right: int = 0  # b
    candidate_only_right: int = 0  # c

    def add(self, champion: int, candidate: int, label: int) -> None:
        champion_right, candidate_right = champion == label, candidate == label
        self.paired += 1
        self.champion_errors += not champion_right
        self.candidate_errors += not candidate_right
        self.champion_only_right += champion_right and not candidate_right
        self.candidate_only_right += candidate_right and not champion_right


def p99(values: Iterable[float]) -> float | None:
    """The nearest-rank 99th percentile: the smallest value at least 99% of the
    values are at or below. Always a latency one answer really took, so the
    figure in a reason is one a reader can find among the answers."""
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[math.ceil(0.99 * len(ordered)) - 1]


class Latencies:
    """The candidate's most recent shadow scoring latencies, in milliseconds."""

    def __init__(self, values: Iterable[float] = (), limit: int = LATENCY_WINDOW) -> None:
        self._values: deque[float] = deque(maxlen=limit)
        for value in values:
            self.add(value)

    def add(self, ms: float) -> bool:
        """Keep one latency; one that is no duration (negative, NaN) is no measurement."""
        if not (math.isfinite(ms) and ms >= 0.0):
            return False
        self._values.append(float(ms))
        return True

    def __len__(self) -> int:
        return len(self._values)

    def p99(self) -> float | None:
        return p99(self._values)

    def to_json(self) -> list[float]:
        return list(self._values)


@dataclass(frozen=True)
class Figures:
    """What a verdict was reached on (`RolloutFigures` on the wire)."""

    paired: int
    champion_errors: int
    candidate_errors: int
    champion_only_right: int
    candidate_only_right: int
    p_value: float
    log_likelihood_ratio: float  # of the "better" test
    # The candidate's shadow p99 (0 when none was measured) and how many it is of.
    candidate_p99_ms: float = 0.0
    candidate_scored: int = 0


def log_likelihood_ratios(b: int, c: int, effect: float) -> tuple[float, float]:
    """The "better" and "worse" tests' log likelihood ratios against p = 0.5.

    Under "better" each event only the candidate got right is (0.5 + effect) /
    0.5 times as likely as under H0, and each one only the champion got right
    (0.5 - effect) / 0.5 times; "worse" swaps the two."""
    up, down = math.log1p(2.0 * effect), math.log1p(-2.0 * effect)
    return c * up + b * down, b * up + c * down


def mcnemar_p_value(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value: twice the binomial(b + c, 1/2) tail at min(b, c).

    Summed in log space, so thousands of discordant events neither underflow
    nor lose the tail. Computed for a verdict only (its cost grows with min(b, c))."""
    n, k = b + c, min(b, c)
    if n == 0 or 2 * k == n:
        return 1.0
    base = math.lgamma(n + 1) - n * math.log(2.0)
    logs = [base - math.lgamma(i + 1) - math.lgamma(n - i + 1) for i in range(k + 1)]
    top = max(logs)
    tail = math.exp(top) * math.fsum(math.exp(x - top) for x in logs)
    return min(1.0, 2.0 * tail)


def figures_of(counts: Counts, policy: RolloutPolicy, latencies: Latencies) -> Figures:
    b, c = counts.champion_only_right, counts.candidate_only_right
    better, _ = log_likelihood_ratios(b, c, policy.effect)
    return Figures(
        counts.paired,
        counts.champion_errors,
        counts.candidate_errors,
        b,
        c,
        mcnemar_p_value(b, c),
        better,
        latencies.p99() or 0.0,
        len(latencies),
    )


@dataclass(frozen=True)
class _Words:
    """How a reason names the two versions: a trial's candidate and champion, or
    a watch's previous and new champion."""

    candidate: str  # "candidate v3"
    champion: str  # "champion v2"
    pair: str  # whose errors come first in "N vs M errors (...)"
    candidate_alone: str  # "only the candidate right on ..."
    champion_alone: str  # "..., only the champion on ..."
    verb: str  # "" or "did ", before "better than"

    @classmethod
    def of(cls, rollout: Rollout) -> _Words:
        if rollout.kind is RolloutKind.WATCH:
            return cls(
                f"previous champion v{rollout.candidate}",
                f"new champion v{rollout.champion}",
                "previous vs new champion",
                "the previous champion",
                "the new one",
                "did ",
            )
        return cls(
            f"candidate v{rollout.candidate}",
            f"champion v{rollout.champion}",
            "candidate vs champion",
            "the candidate",
            "the champion",
            "",
        )


@dataclass(frozen=True)
class Verdict:
    """A rollout judged: promote or reject, by which rule, on which figures."""

    rollout: Rollout
    rule: Rule
    figures: Figures
    judged_ms: int

    @property
    def promote(self) -> bool:
        return self.rule.promotes

    @property
    def reason(self) -> str:
        """The verdict in words, with the figures a reader needs to trust it."""
        rollout, f, policy = self.rollout, self.figures, self.rollout.policy
        words = _Words.of(rollout)
        candidate, champion, did = words.candidate, words.champion, words.verb
        evidence = (
            f"on {f.paired} paired labelled events: {f.candidate_errors} vs "
            f"{f.champion_errors} errors ({words.pair}), only {words.candidate_alone} right "
            f"on {f.candidate_only_right}, only {words.champion_alone} on "
            f"{f.champion_only_right}, McNemar p={_p(f.p_value)}"
        )
        if self.rule in (Rule.BETTER, Rule.OVER_LATENCY_BUDGET):
            bound = f"log LR {f.log_likelihood_ratio:.2f} >= {policy.upper:.2f}"
            better = f"{candidate} {did}better than {champion} {evidence}; {bound}"
            return f"{better}{self._latency()}"
        if self.rule is Rule.WORSE:
            _, worse = log_likelihood_ratios(
                f.champion_only_right, f.candidate_only_right, policy.effect
            )
            bound = f"log LR of worse {worse:.2f} >= {policy.upper:.2f}"
            return f"{candidate} {did}worse than {champion} {evidence}; {bound}"
        if self.rule is Rule.NOT_BETTER:
            bound = f"log LR {f.log_likelihood_ratio:.2f} <= {policy.lower:.2f}"
            return (
                f"{candidate} {did}no better than {champion} (by {policy.effect:g}) "
                f"{evidence}; {bound}"
            )
        return (
            f"time ran out: no verdict within {_duration(policy.max_duration_ms)}; "
            f"{candidate} vs {champion} {evidence}"
        )

    def _latency(self) -> str:
        """What the latency budget said of a better candidate ("" without a budget)."""
        budget, f = self.rollout.latency_budget_ms, self.figures
        if budget is None:
            return ""
        on = f"on {f.candidate_scored} shadow answers"
        if f.candidate_scored < MIN_LATENCY_SAMPLE:
            return (
                f"; shadow p99 not held to the {_ms(budget)} ms budget: measured {on}, "
                f"fewer than {MIN_LATENCY_SAMPLE}"
            )
        p99 = _ms(f.candidate_p99_ms)
        if self.rule is Rule.OVER_LATENCY_BUDGET:
            return f"; but its shadow p99 {p99} ms ({on}) is over the {_ms(budget)} ms budget"
        return f"; shadow p99 {p99} ms ({on}) within the {_ms(budget)} ms budget"


def _p(value: float) -> str:
    return f"{value:.3f}" if value >= 0.001 else f"{value:.1e}"


def _ms(value: float) -> str:
    # One decimal reads well from a millisecond up; below, keep two significant digits.
    return f"{value:.1f}" if value >= 1.0 else f"{value:.2g}"


def _duration(ms: int) -> str:
    seconds = ms // 1000
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else ""]
    parts.append(f"{seconds}s" if seconds or not any(parts) else "")
    return "".join(parts)


def decide(rollout: Rollout, counts: Counts, now_ms: int) -> Rule | None:
    """The rule that ends the rollout now, if any (see the module docstring).

    Time is checked first: an event counted after the deadline comes too late
    to change the outcome. Then "better", "worse" and "no better", in that
    order, so that a clearly worse candidate is called worse."""
    if now_ms >= rollout.deadline_ms:
        return Rule.TIME_RAN_OUT
    policy = rollout.policy
    if counts.paired < policy.min_paired:
        return None
    better, worse = log_likelihood_ratios(
        counts.champion_only_right, counts.candidate_only_right, policy.effect
    )
    if better >= policy.upper:
        return Rule.BETTER
    if worse >= policy.upper:
        return Rule.WORSE
    if better <= policy.lower:
        return Rule.NOT_BETTER
    return None


def latency_guard(rollout: Rollout, rule: Rule, latencies: Latencies) -> Rule:
    """A better trial candidate whose shadow p99 is over the policy's budget is
    rejected instead. Only a promotion is held back: a rejection stands as it is,
    and so does a candidate whose latency was measured on too few answers."""
    budget = rollout.latency_budget_ms
    if rule is not Rule.BETTER or budget is None or len(latencies) < MIN_LATENCY_SAMPLE:
        return rule
    measured = latencies.p99()
    return Rule.OVER_LATENCY_BUDGET if measured is not None and measured > budget else rule


# ---------------------------------------------------------------------- one rollout's pairing


@dataclass
class _Parts:
    """The parts of one event a rollout has seen so far."""

    arrived_ms: int
    champion: int | None = None
    candidate: int | None = None
    label: int | None = None


class Added(Enum):
    """What one part did to its event: completed it, left it waiting, or nothing."""

    PAIRED = "paired"
    WAITING = "waiting"
    DUPLICATE = "duplicate"


class _Trial:
    """One rollout: its pending events, the ones counted, the tallies and its verdict."""

    def __init__(self, rollout: Rollout, ttl_ms: int, max_pending: int) -> None:
        self.rollout = rollout
        self._ttl_ms = ttl_ms
        self._max_pending = max_pending
        # event id -> parts seen; insertion order is first arrival.
        self.pending: OrderedDict[str, _Parts] = OrderedDict()
        # event id -> when it was counted, for deduplication.
        self.counted: OrderedDict[str, int] = OrderedDict()
        self.counts = Counts()
        self.latencies = Latencies()
        self.verdict: Verdict | None = None

    def knows(self, event_id: str, side: str) -> bool:
        """Whether this part of the event was seen already (while it is remembered)."""
        if event_id in self.counted:
            return True
        parts = self.pending.get(event_id)
        return parts is not None and getattr(parts, side) is not None

    def add(self, event_id: str, side: str, value: int, now_ms: int) -> Added:
        """Record one part (`champion`, `candidate` or `label`) of an event. A part
        seen before (a duplicate, or a correction of the label) changes nothing."""
        if event_id in self.counted:
            return Added.DUPLICATE
        parts = self.pending.get(event_id)
        if parts is None:
            parts = self.pending[event_id] = _Parts(now_ms)
            while len(self.pending) > self._max_pending:
                self.pending.popitem(last=False)
        if getattr(parts, side) is not None:
            return Added.DUPLICATE
        setattr(parts, side, value)
        if parts.champion is None or parts.candidate is None or parts.label is None:
            return Added.WAITING
        del self.pending[event_id]
        self.counted[event_id] = now_ms
        while len(self.counted) > self._max_pending:
            self.counted.popitem(last=False)
        self.counts.add(parts.champion, parts.candidate, parts.label)
        return Added.PAIRED

    def judge(self, now_ms: int) -> Verdict | None:
        if self.verdict is not None:
            return None
        rule = decide(self.rollout, self.counts, now_ms)
        if rule is None:
            return None
        rule = latency_guard(self.rollout, rule, self.latencies)
        figures = figures_of(self.counts, self.rollout.policy, self.latencies)
        self.verdict = Verdict(self.rollout, rule, figures, now_ms)
        # Nothing more counts: what waited is no longer needed.
        self.pending.clear()
        self.counted.clear()
        return self.verdict

    def expire(self, now_ms: int) -> int:
        horizon = now_ms - self._ttl_ms
        dropped = 0
        while self.pending and next(iter(self.pending.values())).arrived_ms < horizon:
            self.pending.popitem(last=False)
            dropped += 1
        while self.counted and next(iter(self.counted.values())) < horizon:
            self.counted.popitem(last=False)
        return dropped

    def to_json(self) -> dict[str, Any]:
        rollout = self.rollout
        verdict = self.verdict
        return {
            "rollout": {
                "rollout_id": rollout.rollout_id,
                "model": rollout.model,
                "candidate": rollout.candidate,
                "champion": rollout.champion,
                "started_ms": rollout.started_ms,
                "policy": asdict(rollout.policy),
                "kind": rollout.kind.value,
            },
            "pending": [
                [event_id, p.arrived_ms, p.champion, p.candidate, p.label]
                for event_id, p in self.pending.items()
            ],
            "counted": list(self.counted.items()),
            "counts": asdict(self.counts),
            "latencies": self.latencies.to_json(),
            "verdict": None
            if verdict is None
            else {
                "rule": verdict.rule.value,
                "figures": asdict(verdict.figures),
                "judged_ms": verdict.judged_ms,
            },
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], ttl_ms: int, max_pending: int) -> _Trial:
        saved = data["rollout"]
        rollout = Rollout(
            saved["rollout_id"],
            saved["model"],
            int(saved["candidate"]),
            int(saved["champion"]),
            int(saved["started_ms"]),
            RolloutPolicy(**saved["policy"]),
            # States saved before rollouts had kinds or latencies: trials, none measured.
            RolloutKind(saved.get("kind", RolloutKind.TRIAL.value)),
        )
        trial = cls(rollout, ttl_ms, max_pending)
        for event_id, arrived, champion, candidate, label in data["pending"]:
            trial.pending[event_id] = _Parts(arrived, champion, candidate, label)
        for event_id, at in data["counted"]:
            trial.counted[event_id] = int(at)
        trial.counts = Counts(**data["counts"])
        trial.latencies = Latencies(data.get("latencies", ()))
        verdict = data["verdict"]
        if verdict is not None:
            trial.verdict = Verdict(
                rollout, Rule(verdict["rule"]), Figures(**verdict["figures"]), verdict["judged_ms"]
            )
        return trial


# ---------------------------------------------------------------------- the judge


@dataclass
class JudgeStats:
    paired: int = 0
    duplicates: int = 0
    unmatched: int = 0  # shadow answers of no open rollout, or of another version
    expired: int = 0


@dataclass
class Judged:
    """What one input did to the judge: paired events counted, verdicts reached."""

    paired: int = 0
    verdicts: list[Verdict] = field(default_factory=list)


class RolloutJudge:
    """Every open rollout of one model, fed the champion's answers, the candidates'
    shadow answers and the labels; a verdict comes out once per rollout."""

    def __init__(self, model: str, ttl_ms: int, max_pending: int) -> None:
        self.model = model
        self._ttl_ms = ttl_ms
        self._max_pending = max_pending
        self._trials: OrderedDict[str, _Trial] = OrderedDict()
        self._ended: OrderedDict[str, None] = OrderedDict()
        self.stats = JudgeStats()

    # ------------------------------------------------------------------ rollouts

    @property
    def open(self) -> int:
        """Rollouts being judged: started, not judged, not ended."""
        return sum(trial.verdict is None for trial in self._trials.values())

    def rollout(self, rollout_id: str) -> Rollout | None:
        trial = self._trials.get(rollout_id)
        return None if trial is None else trial.rollout

    def counts(self, rollout_id: str) -> Counts | None:
        trial = self._trials.get(rollout_id)
        return None if trial is None else trial.counts

    def verdict(self, rollout_id: str) -> Verdict | None:
        trial = self._trials.get(rollout_id)
        return None if trial is None else trial.verdict

    def start(self, rollout: Rollout, now_ms: int) -> Judged:
        """Open a rollout of this model; a rollout seen before (open, judged or
        ended) is not opened again. A rollout whose time already ran out is
        rejected at once."""
        if (
            rollout.model != self.model
            or rollout.rollout_id in self._trials
            or rollout.rollout_id in self._ended
        ):
            return Judged()
        self._trials[rollout.rollout_id] = _Trial(rollout, self._ttl_ms, self._max_pending)
        while len(self._trials) > MAX_ROLLOUTS:
            # Judged rollouts whose end never came go first, then the oldest open one.
            judged = [key for key, trial in self._trials.items() if trial.verdict is not None]
            dropped = judged[0] if judged else next(iter(self._trials))
            del self._trials[dropped]
            self._remember_ended(dropped)
        return self.due(now_ms)

    def end(self, rollout_id: str) -> bool:
        """The registry ended a rollout: forget it. True when it was known."""
        self._remember_ended(rollout_id)
        return self._trials.pop(rollout_id, None) is not None

    def _remember_ended(self, rollout_id: str) -> None:
        self._ended[rollout_id] = None
        while len(self._ended) > ENDED_MEMORY:
            self._ended.popitem(last=False)

    # ------------------------------------------------------------------ inputs

    def on_champion(self, event_id: str, version: int, predicted: int, now_ms: int) -> Judged:
        """A registered version's own answer (never a shadow): the champion's for
        every rollout that compares against that version."""
        judged = self.due(now_ms)
        for trial in self._judging():
            if trial.rollout.champion == version:
                self._count(trial, event_id, "champion", predicted, now_ms, judged)
        return judged

    def on_candidate(self, shadow: ShadowSeen, now_ms: int) -> Judged:
        judged = self.due(now_ms)
        trial = self._trials.get(shadow.rollout_id)
        if (
            trial is None
            or trial.verdict is not None
            or shadow.model != self.model
            or shadow.version != trial.rollout.candidate
        ):
            self.stats.unmatched += 1
            return judged
        # Kept before the answer is counted: the answer that completes the
        # deciding event is part of the latency the verdict is judged on. A
        # duplicated answer is one scoring, so its latency counts once.
        if shadow.latency_ms is not None and not trial.knows(shadow.event_id, "candidate"):
            trial.latencies.add(shadow.latency_ms)
        self._count(trial, shadow.event_id, "candidate", shadow.predicted, now_ms, judged)
        return judged

    def on_label(self, event_id: str, label: int, now_ms: int) -> Judged:
        judged = self.due(now_ms)
        for trial in self._judging():
            self._count(trial, event_id, "label", label, now_ms, judged)
        return judged

    def due(self, now_ms: int) -> Judged:
        """Rollouts whose time ran out by `now_ms`, judged (also called on a tick)."""
        judged = Judged()
        for trial in self._judging():
            if now_ms >= trial.rollout.deadline_ms:
                verdict = trial.judge(now_ms)
                if verdict is not None:
                    judged.verdicts.append(verdict)
        return judged

    def expire(self, now_ms: int) -> None:
        """Forget the parts of events that waited longer than the time-to-live."""
        for trial in self._trials.values():
            self.stats.expired += trial.expire(now_ms)

    def _judging(self) -> list[_Trial]:
        return [trial for trial in self._trials.values() if trial.verdict is None]

    def _count(
        self, trial: _Trial, event_id: str, side: str, value: int, now_ms: int, judged: Judged
    ) -> None:
        added = trial.add(event_id, side, value, now_ms)
        if added is Added.DUPLICATE:
            self.stats.duplicates += 1
        if added is not Added.PAIRED:
            return
        self.stats.paired += 1
        judged.paired += 1
        verdict = trial.judge(now_ms)
        if verdict is not None:
            judged.verdicts.append(verdict)

    # ------------------------------------------------------------------ state

    def to_json(self) -> dict[str, Any]:
        return {
            "trials": [trial.to_json() for trial in self._trials.values()],
            "ended": list(self._ended),
        }

    def load(self, data: dict[str, Any]) -> None:
        for saved in data["trials"]:
            trial = _Trial.from_json(saved, self._ttl_ms, self._max_pending)
            self._trials[trial.rollout.rollout_id] = trial
        for rollout_id in data["ended"]:
            self._ended[rollout_id] = None
