"""What the demo saw, as plain records: every answer to Predict and every loop event.

The driver fills a `Timeline` while the stream runs; the report and the live
view only read it. Nothing here knows about Kafka or gRPC, so the report can be
tested on a timeline written by hand. Times are wall-clock epoch seconds.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Served:
    """The application's call to Predict for one event."""

    index: int
    at: float
    truth: int
    # "ok", "no_model" (UNAVAILABLE before the first version) or the gRPC code name.
    status: str = "ok"
    # The champion version in effect (None before the first one), whoever answered.
    version: int | None = None
    predicted: int | None = None
    # The online aggregates the model used differed from the point-in-time truth
    # (the feature store had not applied an earlier payment yet).
    skewed: bool = False
    # The online learner that answered instead of the champion ("online:arf"), or "".
    learner: str = ""

    @property
    def correct(self) -> bool:
        return self.status == "ok" and self.predicted == self.truth


@dataclass(frozen=True)
class DriftSeen:
    """A `DriftDetected` record on `drift.detected`."""

    drift_id: str
    model_version: int
    kind: str  # "performance" or "data"
    detector: str
    feature: str
    statistic: float
    threshold: float
    last_event_id: str
    detected_at: float
    trace_id: str | None = None


@dataclass(frozen=True)
class TrainingSeen:
    """A `TrainingRequested` record on `training.requested`."""

    request_id: str
    trigger: str  # "bootstrap", "drift" or "manual"
    parent_drift_id: str
    requested_at: float
    reason: str = ""
    trace_id: str | None = None


@dataclass(frozen=True)
class VersionSeen:
    """A `ModelRegistered` record on `models.registered`."""

    version: int
    status: str  # "champion", "challenger", "rejected", ...
    reason: str
    request_id: str
    metrics: dict[str, float]
    registered_at: float


@dataclass(frozen=True)
class PromotionSeen:
    """A `ModelPromoted` record on `models.promoted`."""

    to_version: int
    from_version: int | None
    alias: str
    kind: str  # "promote" or "rollback"
    reason: str
    promoted_at: float


@dataclass(frozen=True)
class RolloutSeen:
    """A record on `models.rollouts`: a rollout started, judged or ended."""

    rollout_id: str
    step: str  # "started", "judged" or "ended"
    candidate_version: int
    champion_version: int
    # "promote"/"reject" for a verdict, "promoted"/"rejected"/"superseded" at the end.
    outcome: str
    reason: str
    at: float
    paired: int = 0
    champion_errors: int = 0
    candidate_errors: int = 0
    # "trial" (a candidate against the champion) or "watch" (the previous
    # champion shadowing a promoted one); unknown on a verdict.
    kind: str = "trial"


@dataclass(frozen=True)
class FailureSeen:
    """A `TrainingFailed` record on `training.failed`."""

    request_id: str
    stage: str
    reason: str
    failed_at: float


@dataclass
class Timeline:
    """Everything the demo recorded, in the order it happened."""

    started_at: float = 0.0
    finished_at: float = 0.0
    # Wall time each event was sent, by index.
    sent: dict[int, float] = field(default_factory=dict)
    served: list[Served] = field(default_factory=list)
    drifts: list[DriftSeen] = field(default_factory=list)
    trainings: list[TrainingSeen] = field(default_factory=list)
    versions: list[VersionSeen] = field(default_factory=list)
    promotions: list[PromotionSeen] = field(default_factory=list)
    failures: list[FailureSeen] = field(default_factory=list)
    rollouts: list[RolloutSeen] = field(default_factory=list)
    labels_sent: int = 0
    # "recovered", "completed" (every event sent), "timeout", "interrupted".
    outcome: str = "running"

    def answered(self) -> list[Served]:
        return [s for s in self.served if s.status == "ok"]

    def champion_at(self, at: float) -> int | None:
        """The version the newest promotion before `at` made champion."""
        promoted = [p for p in self.promotions if p.promoted_at <= at]
        return max(promoted, key=lambda p: p.promoted_at).to_version if promoted else None

    def current_version(self) -> int | None:
        for served in reversed(self.served):
            if served.status == "ok":
                return served.version
        return None

    def trigger_of(self, version: int) -> str | None:
        """Why the run behind a registered version was asked for, when known."""
        requests = {t.request_id: t for t in self.trainings}
        for seen in self.versions:
            if seen.version == version and seen.request_id in requests:
                return requests[seen.request_id].trigger
        return None


def accuracy(served: Iterable[Served]) -> float | None:
    answered = [s for s in served if s.status == "ok"]
    if not answered:
        return None
    return sum(s.correct for s in answered) / len(answered)


def retrained_versions(timeline: Timeline, onset: int | None) -> list[int]:
    """Versions promoted after the onset was sent, beyond the one serving then, in
    promotion order: the loop's answers to the drift. Empty without a drift."""
    if onset is None or onset not in timeline.sent:
        return []
    onset_at = timeline.sent[onset]
    serving = max(
        (s.version or 0 for s in timeline.served if s.status == "ok" and s.index < onset),
        default=0,
    )
    promotions = sorted(timeline.promotions, key=lambda p: p.promoted_at)
    out: list[int] = []
    for promotion in promotions:
        if (
            promotion.kind == "promote"
            and promotion.promoted_at >= onset_at
            and promotion.to_version > serving
            and promotion.to_version not in out
        ):
            out.append(promotion.to_version)
    return out


def post_drift_version(timeline: Timeline, onset: int | None) -> int | None:
    """The newest version promoted after the onset: the one the recovery is judged on.

    A first retrain may still mix rows from before the change (when the
    detector's change point is early) and be followed by a better one; the run
    is over when the newest one has recovered.
    """
    versions = retrained_versions(timeline, onset)
    return versions[-1] if versions else None


def recovered(timeline: Timeline, onset: int | None, window: int, target: float) -> bool:
    """The newest post-drift version has answered `window` predictions, with at least
    `target` accuracy over the newest `window` of them."""
    version = post_drift_version(timeline, onset)
    if version is None:
        return False
    newest = [s for s in timeline.served if s.status == "ok" and s.version == version]
    if len(newest) < window:
        return False
    score = accuracy(newest[-window:])
    return score is not None and score >= target
