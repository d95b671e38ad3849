"""The promotion gate and the rollback target, as pure functions."""

from __future__ import annotations

from driftloop_registry.domain import GatePolicy, Kind, decide_promotion, next_rollback_target

POLICY = GatePolicy()


def test_first_version_is_promoted_without_comparison() -> None:
    decision = decide_promotion(
        POLICY,
        metrics={"roc_auc": 0.6},
        champion_metrics={},
        measured_champion=None,
        current_champion=None,
    )
    assert decision.promote
    assert "no champion" in decision.reason


def test_challenger_beating_champion_by_the_margin_is_promoted() -> None:
    decision = decide_promotion(
        POLICY,
        metrics={"roc_auc": 0.90},
        champion_metrics={"roc_auc": 0.88},
        measured_champion=3,
        current_champion=3,
    )
    assert decision.promote
    assert "0.9000" in decision.reason and "0.8800" in decision.reason


def test_challenger_within_the_margin_stays_candidate_with_figures() -> None:
    decision = decide_promotion(
        POLICY,
        metrics={"roc_auc": 0.883},
        champion_metrics={"roc_auc": 0.88},
        measured_champion=3,
        current_champion=3,
    )
    assert not decision.promote
    assert decision.reason.startswith("not promoted")
    assert "margin 0.0050" in decision.reason


def test_margin_is_configurable() -> None:
    decision = decide_promotion(
        GatePolicy(min_improvement=0.0),
        metrics={"roc_auc": 0.881},
        champion_metrics={"roc_auc": 0.88},
        measured_champion=1,
        current_champion=1,
    )
    assert decision.promote


def test_lower_is_better_metric() -> None:
    policy = GatePolicy(primary_metric="log_loss", min_improvement=0.01, higher_is_better=False)
    better = decide_promotion(
        policy,
        metrics={"log_loss": 0.30},
        champion_metrics={"log_loss": 0.35},
        measured_champion=1,
        current_champion=1,
    )
    worse = decide_promotion(
        policy,
        metrics={"log_loss": 0.40},
        champion_metrics={"log_loss": 0.35},
        measured_champion=1,
        current_champion=1,
    )
    assert better.promote and not worse.promote


def test_missing_champion_metrics_blocks_promotion_and_says_why() -> None:
    decision = decide_promotion(
        POLICY,
        metrics={"roc_auc": 0.99},
        champion_metrics={},
        measured_champion=None,
        current_champion=2,
    )
    assert not decision.promote
    assert "champion_metrics lack roc_auc" in decision.reason


def test_comparison_with_a_stale_champion_is_not_like_for_like() -> None:
    decision = decide_promotion(
        POLICY,
        metrics={"roc_auc": 0.99},
        champion_metrics={"roc_auc": 0.5},
        measured_champion=1,
        current_champion=2,
    )
    assert not decision.promote
    assert "champion is now v2" in decision.reason


def test_rollback_walks_back_through_earlier_champions() -> None:
    history = [(Kind.PROMOTE, None, 1), (Kind.PROMOTE, 1, 2), (Kind.PROMOTE, 2, 3)]
    assert next_rollback_target(history) == 2
    history.append((Kind.ROLLBACK, 3, 2))
    assert next_rollback_target(history) == 1
    history.append((Kind.ROLLBACK, 2, 1))
    assert next_rollback_target(history) is None
    assert next_rollback_target([]) is None
