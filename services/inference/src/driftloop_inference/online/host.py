"""The arena as one inference process runs it: asked by Predict, fed from the topics.

`arena.py` decides who answers; this module is its place in the service. Every
process (each replica, each worker) keeps its own arena and feeds it the same
records, every served prediction and every label read back from Kafka, so they
agree on who answers without talking to each other.

Two things live here besides the arena itself:

- the evidence a published Prediction gives: the features Predict used (those
  that took a default left out, as missing) and the champion's answer, which
  is the served answer when a registered version answered and its shadow when
  an online learner did (none when there was no champion);
- what an SRE sees: on every change of who answers, `arena_leader_changed`
  is logged with the recent accuracies, and the leader gauge moves; the labels
  learnt and each contender's recent accuracy are metrics too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import structlog
from driftloop.v1 import common_pb2, events_pb2
from driftloop_core.values import Value, from_feature_value

from driftloop_inference.metrics import (
    ARENA_ACCURACY,
    ARENA_LABELS_LEARNT,
    ARENA_LEADER,
    ARENA_LEADER_CHANGES,
)
from driftloop_inference.online.arena import Answer, Arena, champion_key

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Evidence:
    """What `Arena.observe` takes from one published Prediction."""

    event_id: str
    features: dict[str, Value]
    # (version, label) the champion answered; None when there was no champion.
    champion: tuple[int, int] | None


def learner_inputs(
    used: Mapping[str, common_pb2.FeatureValue], missing: Iterable[str]
) -> dict[str, Value]:
    """The features as the learners read them: plain values, with those that
    took a default left out (missing, for river)."""
    skipped = set(missing)
    inputs: dict[str, Value] = {}
    for name, value in used.items():
        if name in skipped:
            continue
        plain = from_feature_value(value)
        if plain is not None:
            inputs[name] = plain
    return inputs


def evidence(prediction: events_pb2.Prediction) -> Evidence:
    """The arena's view of a served prediction (Predict publishes what it used)."""
    champion: tuple[int, int] | None = None
    if not prediction.learner and prediction.model_version > 0:
        champion = (prediction.model_version, prediction.label)
    elif prediction.HasField("champion") and prediction.champion.model_version > 0:
        champion = (prediction.champion.model_version, prediction.champion.label)
    return Evidence(
        prediction.event_id,
        learner_inputs(prediction.features, prediction.defaults_applied),
        champion,
    )


class ArenaHost:
    """The arena of `model` in this process, with its logs and metrics.

    `champion` says which version is serving now (None before the first), for
    the leader check after each batch the feed hands in."""

    def __init__(self, model: str, arena: Arena, champion: Callable[[], int | None]) -> None:
        self.model = model
        self.arena = arena
        self._champion = champion
        self._leader: str | None = None  # "v<version>" or "online:<name>"
        self._learnt = 0

    def leader(self, champion: int | None) -> str:
        """Who answers now: "" for the champion (version `champion`), else the learner."""
        learner = self.arena.leader(champion)
        if learner:
            self._note(learner)
        elif champion is not None:
            self._note(champion_key(champion))
        return learner

    def answer(self, learner: str, features: Mapping[str, Value]) -> Answer:
        return self.arena.answer(learner, features)

    def observe(self, prediction: events_pb2.Prediction) -> bool:
        """A prediction read back from the topic; False when it is another model's
        or a rollout candidate's shadow answer, which no caller was given (it
        would take the served answer's place for its event)."""
        if prediction.model != self.model or prediction.shadow:
            return False
        seen = evidence(prediction)
        self.arena.observe(seen.event_id, seen.features, seen.champion)
        return True

    def label(self, model: str, event_id: str, label: int) -> bool:
        """An event's label; False when it is another model's."""
        if model != self.model:
            return False
        self.arena.label(event_id, label)
        return True

    def settled(self) -> None:
        """After a batch of evidence: the metrics, and whether the leader changed."""
        arena = self.arena
        if arena.learnt > self._learnt:
            ARENA_LABELS_LEARNT.labels(self.model).inc(arena.learnt - self._learnt)
            self._learnt = arena.learnt
        for contender, accuracy in arena.accuracies().items():
            if accuracy is not None:
                ARENA_ACCURACY.labels(self.model, contender).set(accuracy)
        self.leader(self._champion())

    def _note(self, leader: str) -> None:
        previous = self._leader
        if leader == previous:
            return
        self._leader = leader
        if previous is not None:
            ARENA_LEADER.remove(self.model, previous)
            ARENA_LEADER_CHANGES.labels(self.model).inc()
        ARENA_LEADER.labels(self.model, leader).set(1)
        log.info(
            "arena_leader_changed",
            model=self.model,
            **{"from": previous or "none", "to": leader},
            accuracies={
                key: round(accuracy, 4)
                for key, accuracy in sorted(self.arena.accuracies().items())
                if accuracy is not None
            },
            learnt=self.arena.learnt,
        )
