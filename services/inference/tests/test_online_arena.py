"""The arena's choice of who answers, on small labelled streams (pure domain)."""

from __future__ import annotations

import random

from driftloop_inference.online.arena import PRIOR, VOTE, Arena, ArenaConfig

# y = 1 when x > 0: a concept every learner gets right after a few hundred labels.
Event = tuple[str, dict[str, float], int]


def stream(n: int, seed: int = 7, flipped: bool = False) -> list[Event]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        x = rng.uniform(-1, 1)
        y = int(x > 0) ^ int(flipped)
        out.append((f"e{seed}-{i}", {"x": x, "noise": rng.uniform(-1, 1)}, y))
    return out


def replay(
    arena: Arena,
    events: list[Event],
    champion: tuple[int, bool] | None = None,
    delay: int = 20,
) -> list[str]:
    """Serve each event as inference does (leader answers, observe, label `delay`
    events later); `champion` is (version, always right?). The leaders, in order."""
    leaders = []
    for position, (event_id, x, y) in enumerate(events):
        version = None if champion is None else champion[0]
        leaders.append(arena.leader(version))
        shadow = None if champion is None else (champion[0], y if champion[1] else 1 - y)
        arena.observe(event_id, x, shadow)
        if position >= delay:
            old_id, _, old_y = events[position - delay]
            arena.label(old_id, old_y)
    return leaders


def test_a_fresh_arena_answers_the_majority_class_until_it_has_learnt() -> None:
    arena = Arena(ArenaConfig(window=100, min_scored=10))
    assert arena.leader(None) == VOTE
    first = arena.answer(VOTE, {"x": 0.5})
    assert (first.learner, first.label) == (PRIOR, 0)

    replay(arena, stream(600))

    right = sum(arena.answer(arena.leader(None), x).label == y for _, x, y in stream(200, seed=99))
    assert right >= 180, f"{right}/200 right after 600 labels on y = (x > 0)"


def test_a_champion_that_is_always_right_keeps_the_lead() -> None:
    arena = Arena(ArenaConfig(window=100, min_scored=10))
    leaders = replay(arena, stream(600), champion=(3, True))
    assert set(leaders) == {""}, "ties and a lead both go to the champion"


def test_a_champion_that_is_wrong_loses_the_lead_and_a_new_version_must_earn_it() -> None:
    arena = Arena(ArenaConfig(window=100, min_scored=10))
    leaders = replay(arena, stream(600), champion=(3, False))
    assert leaders[0] == "", "before any evidence the champion answers"
    assert leaders[-1].startswith("online:") and leaders[-1] != PRIOR
    # A newly promoted version starts unscored: the learners keep answering
    # until it has been scored min_scored times and is ahead.
    leaders = replay(arena, stream(200, seed=8), champion=(4, True))
    assert leaders[0].startswith("online:")
    assert leaders[-1] == ""


def test_after_the_concept_flips_the_learners_follow_and_the_lead_moves_to_them() -> None:
    arena = Arena(ArenaConfig(window=50, min_scored=10))
    replay(arena, stream(500), champion=(1, True))
    # The champion keeps answering as before the change: now always wrong.
    flipped = stream(1500, seed=11, flipped=True)
    leaders = replay(arena, flipped, champion=(1, False))
    assert leaders[-1] != "", "a stale champion must not keep the lead"
    served_right = sum(
        arena.answer(arena.leader(1), x).label == y for _, x, y in stream(200, 12, True)
    )
    assert served_right >= 150, f"{served_right}/200 right after the flip"


def test_a_label_before_its_prediction_waits_and_is_scored_when_it_comes() -> None:
    arena = Arena(ArenaConfig(window=100, min_scored=1))
    arena.label("early", 1)
    assert arena.learnt == 0
    arena.observe("early", {"x": 0.3}, (2, 1))
    assert arena.learnt == 1
    assert arena.accuracies()["v2"] == 1.0


def test_waiting_predictions_are_bounded_and_the_oldest_go_first() -> None:
    arena = Arena(ArenaConfig(max_pending=10))
    for i in range(25):
        arena.observe(f"p{i}", {"x": float(i)}, None)
    assert arena.dropped == 15
    arena.label("p0", 1)  # long gone: held as an early label instead
    arena.label("p24", 1)
    assert arena.learnt == 1
