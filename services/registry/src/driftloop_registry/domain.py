"""What the registry decides, free of storage and transport.

The promotion gate lives here as a pure function so its rules (no champion,
like-for-like comparison, margin) are tested without a database or a broker.
The errors name what was wrong in words a caller can act on; the gRPC
entrypoint maps them to status codes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any

CHAMPION = "champion"
GATE_ACTOR = "registry"


class Status(enum.StrEnum):
    CANDIDATE = "candidate"
    CHAMPION = "champion"
    ARCHIVED = "archived"


class Kind(enum.StrEnum):
    PROMOTE = "promote"
    ROLLBACK = "rollback"


class RegistryError(Exception):
    """Base of the errors a caller caused."""


class NotFoundError(RegistryError):
    """The model, version or alias does not exist."""


class PreconditionError(RegistryError):
    """The request is valid but the registry's state does not allow it."""


class InvalidRequestError(RegistryError):
    """A field of the request is missing or malformed; `field` and `rule` say
    which and why (the vocabulary of `DeadLetter.rule`)."""

    def __init__(self, message: str, *, field: str = "", rule: str = "") -> None:
        super().__init__(message)
        self.field = field
        self.rule = rule


@dataclass(frozen=True)
class GatePolicy:
    primary_metric: str = "roc_auc"
    min_improvement: float = 0.005
    higher_is_better: bool = True


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str


def decide_promotion(
    policy: GatePolicy,
    *,
    metrics: dict[str, float],
    champion_metrics: dict[str, float],
    measured_champion: int | None,
    current_champion: int | None,
) -> GateDecision:
    """Whether a new version takes the champion alias, and why (with the figures).

    `measured_champion` is the version the trainer evaluated on the same rows;
    `current_champion` is the one holding the alias now. A comparison against
    another version than the current champion is not like for like: no promotion.
    """
    metric = policy.primary_metric
    if current_champion is None:
        return GateDecision(True, "no champion yet: first version takes the alias")
    if metric not in metrics:
        return GateDecision(False, f"not promoted: its metrics lack {metric}")
    if measured_champion is None or metric not in champion_metrics:
        return GateDecision(
            False,
            f"not promoted: champion v{current_champion} was not evaluated on the same rows "
            f"(champion_metrics lack {metric})",
        )
    if measured_champion != current_champion:
        return GateDecision(
            False,
            f"not promoted: compared with v{measured_champion}, "
            f"but the champion is now v{current_champion}",
        )
    new, old = metrics[metric], champion_metrics[metric]
    gain = new - old if policy.higher_is_better else old - new
    figures = (
        f"{metric} {new:.4f} vs champion v{current_champion} {old:.4f} "
        f"(gain {gain:+.4f}, margin {policy.min_improvement:.4f})"
    )
    if gain >= policy.min_improvement:
        return GateDecision(True, f"promoted: {figures}")
    return GateDecision(False, f"not promoted: {figures}")


def next_rollback_target(changes: list[tuple[Kind, int | None, int]]) -> int | None:
    """The version a rollback restores, from the alias history (oldest first).

    Promotions push the new holder, rollbacks pop, so repeated rollbacks walk
    back through earlier champions instead of toggling between two versions.
    """
    stack: list[int] = []
    for kind, _from_version, to_version in changes:
        if kind is Kind.PROMOTE:
            stack.append(to_version)
        elif stack:
            stack.pop()
            if not stack or stack[-1] != to_version:
                stack.append(to_version)
    return stack[-2] if len(stack) >= 2 else None


@dataclass(frozen=True)
class AliasChange:
    promotion_id: str
    model: str
    alias: str
    from_version: int | None
    to_version: int
    actor: str
    reason: str
    kind: Kind
    at: datetime


@dataclass(frozen=True)
class ModelVersion:
    """One registered version as the registry knows it. `gate_status` and
    `gate_reason` are what the gate decided at registration; `status` moves on
    with the alias. `trained_event` is the whole ModelTrained as received
    (dataset, reference distributions, trigger)."""

    model: str
    version: int
    status: Status
    status_reason: str
    gate_status: Status
    gate_reason: str
    artifact_uri: str
    sha256: str
    size_bytes: int
    media_type: str
    signature: dict[str, Any]
    metrics: dict[str, float]
    champion_metrics: dict[str, float]
    champion_version: int | None
    dataset_digest: str
    params: dict[str, str]
    code_version: str
    parent_version: int | None
    request_id: str
    algorithm: str
    eval_rows: int
    feature_names: list[str]
    trained_event: bytes
    created_at: datetime
    registered_event_id: str


class Stage(enum.StrEnum):
    """Where a rollout stands: open while `SHADOW`, then how it ended (a
    trial: promoted or rejected; a watch: rolled back or kept)."""

    SHADOW = "shadow"
    PROMOTED = "promoted"
    REJECTED = "rejected"
    SUPERSEDED = "superseded"
    ROLLED_BACK = "rolled_back"
    KEPT = "kept"


class RolloutKind(enum.StrEnum):
    """A trial puts a candidate against the champion; the watch after a
    promotion puts the previous champion (its candidate) against the new one."""

    TRIAL = "trial"
    WATCH = "watch"


ROLLOUT_ACTOR = "rollout"


@dataclass(frozen=True)
class RolloutPolicy:
    """How the live judge (drift) decides a rollout; carried on
    ModelRolloutStarted so every judge applies the registry's settings."""

    min_paired: int = 200
    max_duration_s: float = 3600.0
    alpha: float = 0.05
    beta: float = 0.1
    effect: float = 0.15
    # A trial's candidate over this shadow p99 is not promoted; 0: no budget.
    latency_budget_ms: float = 0.0
    # How long the previous champion shadows a promoted one; 0: no watch.
    watch_s: float = 1800.0


@dataclass(frozen=True)
class Rollout:
    """A candidate on trial against the champion on live traffic."""

    rollout_id: str
    model: str
    candidate_version: int
    champion_version: int
    stage: Stage
    gate_reason: str
    policy: RolloutPolicy
    started_at: datetime
    ended_at: datetime | None = None
    end_reason: str = ""
    figures: dict[str, float] | None = None
    kind: RolloutKind = RolloutKind.TRIAL

    @property
    def open(self) -> bool:
        return self.stage is Stage.SHADOW


@dataclass(frozen=True)
class Registration:
    """The outcome of registering a ModelTrained: the version, and the alias change
    the gate made (None when it stayed a candidate). `created` is False on replay.
    With rollouts on, a candidate the gate admits starts `rollout` instead of
    moving the alias, ending the rollout it `superseded`, if any."""

    version: ModelVersion
    change: AliasChange | None
    created: bool
    rollout: Rollout | None = None
    superseded: Rollout | None = None


@dataclass(frozen=True)
class RolloutEnd:
    """A rollout ended by a verdict: the rollout as it ended, the alias change
    its verdict made (a trial's promotion, a watch's rollback; None otherwise),
    and the watch a promotion started."""

    rollout: Rollout
    change: AliasChange | None
    watch: Rollout | None = None


@dataclass(frozen=True)
class ModelStats:
    model: str
    latest_version: int
    champion_version: int | None
    version_count: int
    updated_at: datetime
