"""The rollout judge on its own: pairing by event id in any order, the sequential
rule and its bounds, time running out, duplicates, memory bounds, the state
round trip, the latency budget and a watch's wording, and the rule's error
rates measured on simulated rollouts."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable
from typing import Any

import pytest
from driftloop_drift.domain.rollout import (
    LATENCY_WINDOW,
    MAX_ROLLOUTS,
    MIN_LATENCY_SAMPLE,
    Counts,
    Judged,
    Latencies,
    Rollout,
    RolloutJudge,
    RolloutKind,
    RolloutPolicy,
    Rule,
    ShadowSeen,
    Verdict,
    decide,
    log_likelihood_ratios,
    mcnemar_p_value,
    p99,
)

MODEL = "payments"
T0_MS = 1_763_800_000_000
HOUR_MS = 3_600_000


def rollout(
    rollout_id: str = "r1",
    *,
    candidate: int = 3,
    champion: int = 2,
    started_ms: int = T0_MS,
    kind: RolloutKind = RolloutKind.TRIAL,
    **policy: Any,
) -> Rollout:
    return Rollout(
        rollout_id, MODEL, candidate, champion, started_ms, RolloutPolicy(**policy), kind
    )


def judge(*rollouts: Rollout, ttl_ms: int = HOUR_MS, max_pending: int = 10_000) -> RolloutJudge:
    out = RolloutJudge(MODEL, ttl_ms, max_pending)
    for each in rollouts:
        assert out.start(each, T0_MS) == Judged()
    return out


class Feeder:
    """Events of one rollout: the champion's answer, the candidate's, the label,
    with each version right as often as the test says (independently). The
    candidate's answer to event n took `latency(n)` ms (None: not measured)."""

    def __init__(
        self,
        judge: RolloutJudge,
        trial: Rollout,
        seed: int = 0,
        latency: Callable[[int], float | None] = lambda n: None,
    ) -> None:
        self.judge = judge
        self.rollout = trial
        self.rng = random.Random(seed)
        self.latency = latency
        self.n = 0
        self.now_ms = T0_MS

    def event(
        self, champion_right: bool, candidate_right: bool, order: str = "pcl"
    ) -> list[Verdict]:
        """One event, its three parts in `order` (p champion, c candidate, l label)."""
        self.n += 1
        self.now_ms += 100
        event_id = f"e{self.n}"
        label = int(self.rng.random() < 0.3)
        champion = label if champion_right else 1 - label
        candidate = label if candidate_right else 1 - label
        parts: dict[str, Callable[[], Judged]] = {
            "p": lambda: self.judge.on_champion(
                event_id, self.rollout.champion, champion, self.now_ms
            ),
            "c": lambda: self.judge.on_candidate(
                ShadowSeen(
                    self.rollout.rollout_id,
                    event_id,
                    MODEL,
                    self.rollout.candidate,
                    candidate,
                    self.latency(self.n),
                ),
                self.now_ms,
            ),
            "l": lambda: self.judge.on_label(event_id, label, self.now_ms),
        }
        verdicts: list[Verdict] = []
        for part in order:
            verdicts.extend(parts[part]().verdicts)
        return verdicts

    def run(
        self, champion_accuracy: float, candidate_accuracy: float, limit: int = 20_000
    ) -> Verdict | None:
        """Events until a verdict (or `limit` events)."""
        for _ in range(limit):
            verdicts = self.event(
                self.rng.random() < champion_accuracy, self.rng.random() < candidate_accuracy
            )
            if verdicts:
                assert len(verdicts) == 1
                return verdicts[0]
        return None


# ---------------------------------------------------------------------- the rule


def test_a_clearly_better_candidate_is_promoted_once_min_paired_are_in() -> None:
    trial = rollout(min_paired=100)
    running = judge(trial)
    feeder = Feeder(running, trial, seed=1)
    verdict = feeder.run(champion_accuracy=0.75, candidate_accuracy=0.95)
    assert verdict is not None and verdict.promote and verdict.rule is Rule.BETTER
    figures = verdict.figures
    assert figures.paired == feeder.n == 100, "decided as soon as min_paired were in"
    assert figures.candidate_errors < figures.champion_errors
    assert figures.candidate_only_right > figures.champion_only_right
    assert figures.champion_errors - figures.candidate_errors == (
        figures.candidate_only_right - figures.champion_only_right
    )
    assert figures.log_likelihood_ratio >= trial.policy.upper
    assert figures.p_value < 0.01
    assert verdict.reason.startswith("candidate v3 better than champion v2 on 100 paired")
    assert f"{figures.candidate_errors} vs {figures.champion_errors} errors" in verdict.reason
    assert "McNemar p=" in verdict.reason
    # Judged once: nothing more counts, no second verdict.
    assert feeder.run(0.75, 0.95, limit=300) is None
    assert running.open == 0 and running.verdict("r1") == verdict


def test_a_clearly_worse_candidate_is_rejected_as_worse() -> None:
    trial = rollout(min_paired=200)
    verdict = Feeder(judge(trial), trial, seed=2).run(0.9, 0.6)
    assert verdict is not None and not verdict.promote and verdict.rule is Rule.WORSE
    assert verdict.figures.candidate_errors > verdict.figures.champion_errors
    assert verdict.reason.startswith("candidate v3 worse than champion v2")
    # With a low minimum, the "better" test's lower bound usually comes first.
    early = rollout(min_paired=10)
    verdict = Feeder(judge(early), early, seed=2).run(0.9, 0.6)
    assert verdict is not None and verdict.rule in (Rule.NOT_BETTER, Rule.WORSE)


def test_equal_candidates_end_rejected_by_the_lower_bound_or_by_time() -> None:
    trial = rollout(min_paired=50)
    verdict = Feeder(judge(trial), trial, seed=3).run(0.85, 0.85)
    assert verdict is not None and verdict.rule is Rule.NOT_BETTER and not verdict.promote
    assert verdict.figures.log_likelihood_ratio <= trial.policy.lower
    assert "no better than champion v2 (by 0.1)" in verdict.reason

    # A tiny effect puts both bounds far away: time runs out first.
    slow = rollout(min_paired=50, effect=0.005, max_duration_ms=HOUR_MS)
    running = judge(slow)
    feeder = Feeder(running, slow, seed=3)
    for _ in range(500):
        assert feeder.event(True, True) == []
    assert running.due(slow.deadline_ms - 1).verdicts == []
    [verdict] = running.due(slow.deadline_ms).verdicts
    assert verdict.rule is Rule.TIME_RAN_OUT and not verdict.promote
    assert verdict.figures.paired == 500 and verdict.judged_ms == slow.deadline_ms
    assert verdict.reason.startswith("time ran out: no verdict within 1h;")
    assert running.due(slow.deadline_ms + HOUR_MS).verdicts == [], "judged once"


def test_an_event_after_the_deadline_comes_too_late() -> None:
    trial = rollout(min_paired=1, max_duration_ms=1_000)
    running = judge(trial)
    running.on_champion("late", 2, 1, T0_MS + 10)
    running.on_candidate(ShadowSeen("r1", "late", MODEL, 3, 1), T0_MS + 20)
    judged = running.on_label("late", 1, T0_MS + 1_000)
    [verdict] = judged.verdicts
    assert verdict.rule is Rule.TIME_RAN_OUT and verdict.figures.paired == 0
    assert judged.paired == 0


def test_nothing_is_decided_before_min_paired() -> None:
    trial = rollout(min_paired=50)
    feeder = Feeder(judge(trial), trial)
    # The candidate right and the champion wrong every time: as clear as it gets.
    for _ in range(49):
        assert feeder.event(champion_right=False, candidate_right=True) == []
    [verdict] = feeder.event(champion_right=False, candidate_right=True)
    assert verdict.rule is Rule.BETTER and verdict.figures.paired == 50
    assert verdict.figures.champion_only_right == 0
    assert verdict.figures.candidate_only_right == 50


def test_agreeing_events_count_as_paired_but_move_no_bound() -> None:
    trial = rollout(min_paired=10)
    running = judge(trial)
    feeder = Feeder(running, trial)
    for index in range(400):
        assert feeder.event(index % 3 == 0, index % 3 == 0) == []
    counts = running.counts("r1")
    assert counts is not None and counts.paired == 400
    assert counts.champion_only_right == counts.candidate_only_right == 0


# ---------------------------------------------------------------------- pairing


def test_events_missing_one_side_never_count() -> None:
    trial = rollout(min_paired=1)
    running = judge(trial)
    running.on_champion("a", 2, 1, T0_MS)
    running.on_label("a", 0, T0_MS)  # no candidate answer
    running.on_candidate(ShadowSeen("r1", "b", MODEL, 3, 1), T0_MS)
    running.on_label("b", 1, T0_MS)  # no champion answer
    running.on_champion("c", 2, 1, T0_MS)
    running.on_candidate(ShadowSeen("r1", "c", MODEL, 3, 0), T0_MS)  # no label
    counts = running.counts("r1")
    assert counts is not None and counts.paired == 0
    assert running.stats.paired == 0


def test_only_the_rollouts_champion_and_candidate_versions_answer() -> None:
    trial = rollout(min_paired=1)
    running = judge(trial)
    running.on_champion("e", 7, 1, T0_MS)  # another version's answer is not the champion's
    running.on_candidate(ShadowSeen("r1", "e", MODEL, 4, 1), T0_MS)  # not the candidate
    running.on_candidate(ShadowSeen("other", "e", MODEL, 3, 1), T0_MS)  # not this rollout
    running.on_label("e", 1, T0_MS)
    assert running.stats.paired == 0 and running.stats.unmatched == 2
    running.on_champion("e", 2, 1, T0_MS)
    judged = running.on_candidate(ShadowSeen("r1", "e", MODEL, 3, 0), T0_MS)
    assert judged.paired == 1


@pytest.mark.parametrize("order", ["".join(p) for p in itertools.permutations("pcl")])
def test_the_three_parts_pair_in_any_order(order: str) -> None:
    trial = rollout(min_paired=1_000)
    running = judge(trial)
    feeder = Feeder(running, trial)
    feeder.event(champion_right=True, candidate_right=False, order=order)
    feeder.event(champion_right=False, candidate_right=True, order=order)
    feeder.event(champion_right=False, candidate_right=False, order=order)
    counts = running.counts("r1")
    assert counts is not None
    assert (counts.paired, counts.champion_errors, counts.candidate_errors) == (3, 2, 2)
    assert (counts.champion_only_right, counts.candidate_only_right) == (1, 1)


def test_duplicated_predictions_and_labels_count_once() -> None:
    trial = rollout(min_paired=1_000)
    running = judge(trial)
    shadow = ShadowSeen("r1", "e", MODEL, 3, 1)
    # Duplicates while the event waits: the first part stands.
    running.on_champion("e", 2, 0, T0_MS)
    running.on_champion("e", 2, 1, T0_MS)
    running.on_label("e", 1, T0_MS)
    running.on_label("e", 0, T0_MS)  # a second label (or a correction) changes nothing
    assert running.on_candidate(shadow, T0_MS).paired == 1
    # And after it was counted: a replay of all three counts nothing.
    assert running.on_champion("e", 2, 0, T0_MS).paired == 0
    assert running.on_candidate(shadow, T0_MS).paired == 0
    assert running.on_label("e", 1, T0_MS).paired == 0
    counts = running.counts("r1")
    assert counts == Counts(
        paired=1,
        champion_errors=1,
        candidate_errors=0,
        champion_only_right=0,
        candidate_only_right=1,
    )
    assert running.stats.duplicates == 5


def test_waiting_parts_expire_and_are_bounded() -> None:
    trial = rollout(min_paired=1_000, max_duration_ms=100 * HOUR_MS)
    running = judge(trial, ttl_ms=1_000, max_pending=3)
    running.on_champion("old", 2, 1, T0_MS)
    running.expire(T0_MS + 1_001)
    running.on_candidate(ShadowSeen("r1", "old", MODEL, 3, 1), T0_MS + 1_002)
    assert running.on_label("old", 1, T0_MS + 1_003).paired == 0, "its champion part expired"
    assert running.stats.expired == 1
    # At most three events wait: the oldest go first.
    for index in range(5):
        running.on_label(f"w{index}", 1, T0_MS + 2_000)
    running.on_champion("w0", 2, 1, T0_MS + 2_000)
    assert running.on_candidate(ShadowSeen("r1", "w0", MODEL, 3, 1), T0_MS + 2_000).paired == 0
    running.on_champion("w4", 2, 1, T0_MS + 2_000)
    assert running.on_candidate(ShadowSeen("r1", "w4", MODEL, 3, 1), T0_MS + 2_000).paired == 1


# ---------------------------------------------------------------------- rollouts


def test_rollouts_open_end_and_are_not_reopened() -> None:
    running = RolloutJudge(MODEL, HOUR_MS, 100)
    running.start(Rollout("x", "another-model", 3, 2, T0_MS), T0_MS)
    assert running.open == 0, "another model's rollout is ignored"
    running.start(rollout("r1"), T0_MS)
    running.start(rollout("r1"), T0_MS)
    assert running.open == 1
    assert running.end("r1") and running.open == 0
    running.start(rollout("r1"), T0_MS)
    assert running.open == 0, "a duplicated start of an ended rollout does not reopen it"
    assert not running.end("never-started")


def test_two_rollouts_are_judged_apart_and_at_most_a_few_are_kept() -> None:
    first, second = rollout("r1", candidate=3), rollout("r2", candidate=4, min_paired=1)
    running = judge(first, second)
    running.on_champion("e", 2, 0, T0_MS)
    running.on_label("e", 1, T0_MS)
    running.on_candidate(ShadowSeen("r2", "e", MODEL, 4, 1), T0_MS)
    assert running.counts("r1") == Counts() and running.counts("r2") == Counts(1, 1, 0, 0, 1)
    for index in range(MAX_ROLLOUTS + 2):
        running.start(rollout(f"more{index}"), T0_MS)
    assert running.rollout("r1") is None, "the oldest went first"
    assert running.rollout(f"more{MAX_ROLLOUTS + 1}") is not None


def test_a_rollout_whose_time_ran_out_before_it_opened_is_rejected_at_once() -> None:
    running = RolloutJudge(MODEL, HOUR_MS, 100)
    stale = rollout(max_duration_ms=HOUR_MS)
    [verdict] = running.start(stale, T0_MS + 2 * HOUR_MS).verdicts
    assert verdict.rule is Rule.TIME_RAN_OUT


def test_the_state_round_trip_continues_identically() -> None:
    trial = rollout(min_paired=100)
    first = judge(trial)
    feeder = Feeder(first, trial, seed=5)
    for _ in range(60):
        feeder.event(feeder.rng.random() < 0.7, feeder.rng.random() < 0.95)
    # One event half there, to be completed after the restart.
    first.on_champion("half", 2, 1, feeder.now_ms)
    state = first.to_json()
    second = RolloutJudge(MODEL, HOUR_MS, 10_000)
    second.load(state)
    assert second.to_json() == state
    for running in (first, second):
        running.on_candidate(ShadowSeen("r1", "half", MODEL, 3, 1), feeder.now_ms)
        running.on_label("half", 1, feeder.now_ms)
    feeder_two = Feeder(second, trial, seed=6)
    feeder_one = Feeder(first, trial, seed=6)
    feeder_one.n = feeder_two.n = feeder.n
    feeder_one.now_ms = feeder_two.now_ms = feeder.now_ms
    one, two = feeder_one.run(0.7, 0.95), feeder_two.run(0.7, 0.95)
    assert one is not None and one == two
    # A judged rollout stays judged across a restart.
    third = RolloutJudge(MODEL, HOUR_MS, 10_000)
    third.load(second.to_json())
    assert third.verdict("r1") == one and third.open == 0


def test_a_policy_that_makes_no_sense_is_refused() -> None:
    bad: dict[str, Any]
    for bad in (
        {"alpha": 0.0},
        {"alpha": 0.6, "beta": 0.5},
        {"beta": 1.0},
        {"effect": 0.5},
        {"effect": -0.1},
        {"max_duration_ms": 0},
        {"min_paired": -1},
        {"latency_budget_ms": -1.0},
        {"latency_budget_ms": math.nan},
    ):
        with pytest.raises(ValueError):
            RolloutPolicy(**bad)


# ---------------------------------------------------------------------- the figures


def test_mcnemar_exact_p_value() -> None:
    assert mcnemar_p_value(0, 0) == 1.0
    assert mcnemar_p_value(5, 5) == 1.0
    assert mcnemar_p_value(0, 10) == pytest.approx(2 * 0.5**10)
    assert mcnemar_p_value(10, 0) == mcnemar_p_value(0, 10)
    # Binomial(6, 1/2): P(X <= 1) = 7/64, two-sided 14/64.
    assert mcnemar_p_value(1, 5) == pytest.approx(14 / 64)
    assert 0.0 < mcnemar_p_value(2_000, 2_600) < 1e-15, "deep tails neither underflow nor NaN"


def test_mcnemar_p_value_agrees_with_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    for b, c in [(3, 9), (31, 58), (200, 240), (1, 40), (1_000, 1_090), (17, 16)]:
        expected = stats.binomtest(min(b, c), b + c, 0.5).pvalue
        assert mcnemar_p_value(b, c) == pytest.approx(expected, rel=1e-9)


def test_log_likelihood_ratios_are_walds() -> None:
    better, worse = log_likelihood_ratios(b=3, c=7, effect=0.1)
    assert better == pytest.approx(7 * math.log(0.6 / 0.5) + 3 * math.log(0.4 / 0.5))
    assert worse == pytest.approx(3 * math.log(0.6 / 0.5) + 7 * math.log(0.4 / 0.5))
    policy = RolloutPolicy()
    assert policy.upper == pytest.approx(math.log(0.8 / 0.05))
    assert policy.lower == pytest.approx(math.log(0.2 / 0.95))
    assert decide(rollout(), Counts(paired=10), T0_MS) is None


# ---------------------------------------------------------------------- the latency budget


def two_slow(n: int) -> float:
    """Answers of 10-19.9 ms, but for two of 41.2 ms among the first 100: the
    nearest-rank p99 of 100 is the second slowest, so 41.2 ms."""
    return 41.2 if n in (17, 64) else 10.0 + (n % 100) / 10


def one_slow(n: int) -> float:
    """Answers of 10-19.9 ms and one of 41.2 ms among the first 100: p99 19.9 ms."""
    return 41.2 if n == 17 else 10.0 + (n % 100) / 10


def promoted_at_100(trial: Rollout, latency: Callable[[int], float | None]) -> Verdict:
    """The candidate right and the champion wrong every time: judged at event 100."""
    feeder = Feeder(judge(trial), trial, latency=latency)
    for _ in range(99):
        assert feeder.event(champion_right=False, candidate_right=True) == []
    [verdict] = feeder.event(champion_right=False, candidate_right=True)
    return verdict


def test_a_better_candidate_over_its_latency_budget_is_rejected_naming_both_figures() -> None:
    verdict = promoted_at_100(rollout(min_paired=100, latency_budget_ms=25.0), two_slow)
    assert verdict.rule is Rule.OVER_LATENCY_BUDGET and not verdict.promote
    figures = verdict.figures
    assert (figures.candidate_p99_ms, figures.candidate_scored) == (41.2, 100)
    assert figures.paired == 100 and figures.candidate_only_right == 100
    assert verdict.reason.startswith("candidate v3 better than champion v2 on 100 paired")
    assert verdict.reason.endswith(
        "; but its shadow p99 41.2 ms (on 100 shadow answers) is over the 25.0 ms budget"
    )


def test_a_better_candidate_within_its_latency_budget_is_promoted() -> None:
    verdict = promoted_at_100(rollout(min_paired=100, latency_budget_ms=25.0), one_slow)
    assert verdict.rule is Rule.BETTER and verdict.promote
    assert (verdict.figures.candidate_p99_ms, verdict.figures.candidate_scored) == (19.9, 100)
    assert verdict.reason.startswith("candidate v3 better than champion v2 on 100 paired")
    assert verdict.reason.endswith(
        "; shadow p99 19.9 ms (on 100 shadow answers) within the 25.0 ms budget"
    )
    # Exactly at the budget is within it.
    at = promoted_at_100(rollout(min_paired=100, latency_budget_ms=41.2), two_slow)
    assert at.rule is Rule.BETTER


def test_without_a_budget_latency_is_reported_but_never_judged() -> None:
    verdict = promoted_at_100(rollout(min_paired=100), lambda n: 500.0 + n)
    assert verdict.rule is Rule.BETTER and verdict.promote
    assert (verdict.figures.candidate_p99_ms, verdict.figures.candidate_scored) == (599.0, 100)
    assert "p99" not in verdict.reason and "budget" not in verdict.reason


def test_too_few_shadow_latencies_leave_the_budget_unjudged() -> None:
    """A candidate whose latency was barely measured (or not at all: an inference
    that sends none) is not rejected on it; the reason says so."""
    trial = rollout(min_paired=MIN_LATENCY_SAMPLE, latency_budget_ms=25.0)
    feeder = Feeder(judge(trial), trial, latency=lambda n: 100.0 if n > 1 else None)
    verdicts: list[Verdict] = []
    while not verdicts:
        verdicts = feeder.event(champion_right=False, candidate_right=True)
    [verdict] = verdicts
    assert verdict.rule is Rule.BETTER and verdict.figures.paired == MIN_LATENCY_SAMPLE
    assert verdict.figures.candidate_scored == MIN_LATENCY_SAMPLE - 1
    assert verdict.figures.candidate_p99_ms == 100.0
    assert verdict.reason.endswith(
        f"; shadow p99 not held to the 25.0 ms budget: measured on "
        f"{MIN_LATENCY_SAMPLE - 1} shadow answers, fewer than {MIN_LATENCY_SAMPLE}"
    )
    # None measured at all: the figures say 0 of 0.
    bare = promoted_at_100(rollout(min_paired=100, latency_budget_ms=25.0), lambda n: None)
    assert bare.promote
    assert (bare.figures.candidate_p99_ms, bare.figures.candidate_scored) == (0.0, 0)


def test_rejections_keep_their_reasons_and_gain_the_latency_figures() -> None:
    """Only a promotion is held back by the budget: a worse candidate is rejected
    as worse, however slow, and its figures carry the p99 all the same."""
    trial = rollout(min_paired=100, latency_budget_ms=25.0)
    feeder = Feeder(judge(trial), trial, latency=two_slow)
    verdicts: list[Verdict] = []
    while not verdicts:
        verdicts = feeder.event(champion_right=True, candidate_right=False)
    [verdict] = verdicts
    assert verdict.rule is Rule.WORSE and verdict.figures.paired == 100
    assert verdict.reason.startswith("candidate v3 worse than champion v2 on 100 paired")
    assert "p99" not in verdict.reason
    assert (verdict.figures.candidate_p99_ms, verdict.figures.candidate_scored) == (41.2, 100)


def test_a_watch_ignores_the_budget_and_speaks_of_the_previous_champion() -> None:
    """In a watch the rollout's candidate is the previous champion (v2) shadowing
    the new one (v3): PROMOTE still means the candidate did better (roll back)."""
    watch = rollout(
        candidate=2, champion=3, kind=RolloutKind.WATCH, min_paired=100, latency_budget_ms=25.0
    )
    verdict = promoted_at_100(watch, two_slow)
    assert verdict.rule is Rule.BETTER and verdict.promote
    assert verdict.figures.candidate_p99_ms == 41.2, "measured and reported all the same"
    assert verdict.reason.startswith(
        "previous champion v2 did better than new champion v3 on 100 paired labelled events: "
        "0 vs 100 errors (previous vs new champion), only the previous champion right on 100, "
        "only the new one on 0, McNemar p="
    )
    assert "budget" not in verdict.reason and "candidate" not in verdict.reason

    worse = rollout("w", candidate=2, champion=3, kind=RolloutKind.WATCH, min_paired=100)
    feeder = Feeder(judge(worse), worse)
    verdicts: list[Verdict] = []
    while not verdicts:
        verdicts = feeder.event(champion_right=True, candidate_right=False)
    assert verdicts[0].reason.startswith("previous champion v2 did worse than new champion v3")

    slow = rollout("t", candidate=2, champion=3, kind=RolloutKind.WATCH, max_duration_ms=HOUR_MS)
    [timed_out] = judge(slow).due(slow.deadline_ms).verdicts
    assert timed_out.reason.startswith(
        "time ran out: no verdict within 1h; previous champion v2 vs new champion v3 on 0"
    )


def test_p99_is_the_nearest_rank() -> None:
    assert p99([]) is None
    assert p99([7.5]) == 7.5
    assert p99(float(v) for v in range(1, 101)) == 99.0, "the 99th of 100"
    assert p99(float(v) for v in range(1, 102)) == 100.0, "ceil(0.99 * 101) = 100th"
    assert p99(float(v) for v in range(1, 51)) == 50.0, "below 100 values: the slowest"
    shuffled = [float(v) for v in range(1, 1_001)]
    random.Random(9).shuffle(shuffled)
    assert p99(shuffled) == 990.0
    # numpy's "inverted_cdf" is the same definition.
    numpy = pytest.importorskip("numpy")
    sample = [random.Random(i).lognormvariate(2.5, 0.6) for i in range(1_000)]
    assert p99(sample) == numpy.percentile(sample, 99, method="inverted_cdf")


def test_the_latency_window_keeps_the_most_recent_and_only_durations() -> None:
    latencies = Latencies()
    assert not latencies.add(-1.0) and not latencies.add(math.nan) and not latencies.add(math.inf)
    for value in range(1, LATENCY_WINDOW + 501):
        assert latencies.add(float(value))
    assert len(latencies) == LATENCY_WINDOW
    assert latencies.to_json()[0] == 501.0
    # Of 501..2500, the nearest-rank p99 is the 1,980th: 2,480.
    assert latencies.p99() == 2_480.0


def test_a_duplicated_shadow_answer_counts_its_latency_once() -> None:
    trial = rollout(min_paired=1_000)
    running = judge(trial)
    shadow = ShadowSeen("r1", "e", MODEL, 3, 1, 12.0)
    running.on_candidate(shadow, T0_MS)
    running.on_candidate(shadow, T0_MS)  # waiting for its champion answer and label
    running.on_champion("e", 2, 1, T0_MS)
    running.on_label("e", 1, T0_MS)
    running.on_candidate(shadow, T0_MS)  # after it was counted
    assert running.to_json()["trials"][0]["latencies"] == [12.0]


def test_latencies_survive_the_state_round_trip() -> None:
    trial = rollout(min_paired=100, latency_budget_ms=25.0)
    first = judge(trial)
    feeder = Feeder(first, trial, latency=two_slow)
    # The first slow answer (event 17) comes before the restart, the second (64) after.
    for _ in range(60):
        assert feeder.event(champion_right=False, candidate_right=True) == []
    state = first.to_json()
    assert len(state["trials"][0]["latencies"]) == 60
    assert state["trials"][0]["rollout"]["kind"] == "trial"
    second = RolloutJudge(MODEL, HOUR_MS, 10_000)
    second.load(state)
    assert second.to_json() == state
    verdicts: dict[str, Verdict] = {}
    for name, running in (("first", first), ("second", second)):
        again = Feeder(running, trial, latency=two_slow)
        again.n, again.now_ms = feeder.n, feeder.now_ms
        for _ in range(40):
            for verdict in again.event(champion_right=False, candidate_right=True):
                verdicts[name] = verdict
    assert verdicts["first"] == verdicts["second"]
    assert verdicts["second"].rule is Rule.OVER_LATENCY_BUDGET
    assert verdicts["second"].figures.candidate_scored == 100
    assert verdicts["second"].figures.candidate_p99_ms == 41.2, "the early slow one came back"
    third = RolloutJudge(MODEL, HOUR_MS, 10_000)
    third.load(second.to_json())
    assert third.verdict("r1") == verdicts["second"]

    # A state saved before latencies and kinds: a trial with none measured.
    old = first.to_json()
    del old["trials"][0]["latencies"], old["trials"][0]["rollout"]["kind"]
    del old["trials"][0]["rollout"]["policy"]["latency_budget_ms"]
    del old["trials"][0]["verdict"]["figures"]["candidate_p99_ms"]
    del old["trials"][0]["verdict"]["figures"]["candidate_scored"]
    fourth = RolloutJudge(MODEL, HOUR_MS, 10_000)
    fourth.load(old)
    loaded = fourth.rollout("r1")
    assert loaded is not None and loaded.kind is RolloutKind.TRIAL
    assert loaded.policy.latency_budget_ms == 0.0
    verdict = fourth.verdict("r1")
    assert verdict is not None and verdict.figures.candidate_scored == 0


# ---------------------------------------------------------------------- error rates


ROLLOUTS = 200


def simulate(champion_accuracy: float, candidate_accuracy: float, seed: int) -> list[Verdict]:
    """`ROLLOUTS` rollouts with the default policy, each on a fresh judge."""
    rng = random.Random(seed)
    verdicts: list[Verdict] = []
    for index in range(ROLLOUTS):
        trial = rollout(f"sim{index}", max_duration_ms=1_000 * HOUR_MS)
        feeder = Feeder(judge(trial), trial, seed=rng.randrange(2**32))
        verdict = feeder.run(champion_accuracy, candidate_accuracy)
        assert verdict is not None, "every simulated rollout ends before its time runs out"
        verdicts.append(verdict)
    return verdicts


def test_equally_good_candidates_are_seldom_promoted() -> None:
    """The false-promotion share of two equally good models stays near alpha (0.05)
    or below: with 200 rollouts, one standard error is about 0.015."""
    verdicts = simulate(0.85, 0.85, seed=7)
    share = sum(v.promote for v in verdicts) / len(verdicts)
    assert share <= RolloutPolicy().alpha + 0.03, share
    assert {v.rule for v in verdicts} <= {Rule.BETTER, Rule.NOT_BETTER, Rule.WORSE}


def test_candidates_better_by_the_effect_are_mostly_promoted() -> None:
    """Candidates exactly `effect` better among the events only one gets right (the
    alternative of the test) are promoted about 1 - beta (0.8) of the time or more."""
    # Champion right 80%, candidate 6/7: only-candidate-right is 60% of discordant events.
    verdicts = simulate(0.8, 6 / 7, seed=8)
    share = sum(v.promote for v in verdicts) / len(verdicts)
    assert share >= 1 - RolloutPolicy().beta - 0.06, share
