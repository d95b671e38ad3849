"""The arena: who answers Predict, the champion or an online learner, by recent accuracy.

Batch models answer well once trained, but the first one needs hundreds of
labelled rows and a new one comes only after a detection, a training run and
the gate. Online learners answer from the first event and follow a change one
label at a time, but a well-trained batch model often beats them on a steady
stream. The arena runs both and lets recent, honest evidence choose:

- every prediction the deployment serves (read back from the predictions topic,
  whichever replica served it) is kept, with the champion's answer, until its
  label arrives;
- when the label arrives, each contender is scored on it and only then do the
  learners learn it: prequential, so no contender is scored on an event it has
  learnt. The champion version that was serving is scored on the answer it
  gave; each learner on the answer it gives now, just before learning the
  label (see below);
- besides each learner, the learners' soft vote (`online:vote`: the mean of
  their probabilities) is a contender of its own: on most streams it beats
  every learner alone, and where one learner is far ahead the evidence says so;
- Predict asks `leader`: the contender with the best accuracy over its last
  `window` scored events answers; a contender scored on fewer than
  `min_scored` events cannot lead. Ties go to the champion, then to the vote.
  Before any evidence the champion answers when there is one, else the vote
  (which, before the first label, answers the majority class of the labels
  learnt so far: `online:prior`).

Every choice is made on labels that arrive late, one label delay after the
event. Scored on the answers they gave when the event was served, learners
that follow a change would prove it only a second delay later: the answer
they gave was made before they had seen any label of the change. Scored as
they are when the label arrives (still without that label, so the test stays
honest), the record says what the learner can do now, which is what the
choice is for; a version does not learn, so its served answer is its answer.
A version's error stream is also watched (ADWIN): when its error rises, its
record is cleared and it is judged on what comes after the rise alone, so a
stale champion gives up the lead as soon as the change's labels arrive, and a
version hit by a false alarm wins it back on fresh evidence. The window (400
scored events) is long enough that noise does not make the lead flap on a
steady stream. Measured against river's learners alone, and the alternatives
tried (shorter windows, exponential weights, stacking, soft votes), in
`loadtests/README.md`.

A newly promoted version starts with no score: it answers once it has been
scored `min_scored` times (drift's shadow of it, on every prediction the online
learner serves) and is ahead. Labels that arrive before their prediction wait,
bounded, as predictions wait for their labels.
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from driftloop_inference.online.learners import LEARNERS, Learner, learner_features, make_learner

ONLINE = "online:"
PRIOR = "online:prior"
VOTE = "online:vote"
Features = Mapping[str, float | int | str | bool | None]


@dataclass(frozen=True)
class ArenaConfig:
    learners: tuple[str, ...] = LEARNERS
    # The learners' soft vote as a contender (with two learners or more).
    vote: bool = True
    # Scored events a contender's recent accuracy covers.
    window: int = 400
    # Scored events before a contender may lead.
    min_scored: int = 30
    # ADWIN's confidence on a version's error stream: a rise clears its record.
    version_delta: float = 0.002
    # When a version's error rises, the learners keep this many latest outcomes (0: all).
    forget_on_change: int = 150
    # Score a learner on a label with the learner as it is when the label
    # arrives (before learning it), rather than as it was when it was served.
    score_at_label: bool = True
    # Predictions waiting for their label (and labels for their prediction); oldest go first.
    max_pending: int = 100_000
    seed: int = 0


@dataclass(frozen=True)
class Answer:
    """An online learner's answer: `learner` is "online:<name>" or PRIOR."""

    learner: str
    label: int
    probability: float


@dataclass
class Board:
    """A contender's 0/1 record over its last `size` scored events."""

    size: int
    recent: deque[int] = field(default_factory=deque)
    correct: int = 0
    scored: int = 0
    # For a registered version: ADWIN on its error; a rise clears `recent`.
    watch: Any = None
    resets: int = 0

    def add(self, right: bool, min_scored: int) -> None:
        self.recent.append(int(right))
        self.correct += int(right)
        self.scored += 1
        if len(self.recent) > self.size:
            self.correct -= self.recent.popleft()
        if self.watch is None:
            return
        self.watch.update(1 - int(right))
        if self.watch.drift_detected and len(self.recent) > min_scored:
            latest = sum(list(self.recent)[-min_scored:]) / min_scored
            if latest < self.correct / len(self.recent):
                # Its error rose: judge it on what comes from now on alone.
                self.recent.clear()
                self.correct = 0
                self.scored = 0
                self.resets += 1

    def keep(self, latest: int) -> None:
        """Forget all but the `latest` outcomes."""
        while len(self.recent) > latest:
            self.correct -= self.recent.popleft()

    @property
    def accuracy(self) -> float | None:
        return self.correct / len(self.recent) if self.recent else None


@dataclass(frozen=True)
class _Waiting:
    x: dict[str, Any]
    guesses: dict[str, int]  # contender -> its answer


def champion_key(version: int) -> str:
    return f"v{version}"


class Arena:
    def __init__(self, config: ArenaConfig | None = None) -> None:
        self.config = config or ArenaConfig()
        self.learners: dict[str, Learner] = {
            ONLINE + name: make_learner(name, self.config.seed) for name in self.config.learners
        }
        self.boards: dict[str, Board] = {}
        self.classes: Counter[int] = Counter()
        self._waiting: OrderedDict[str, _Waiting] = OrderedDict()
        self._early: OrderedDict[str, int] = OrderedDict()
        self.learnt = 0
        self.dropped = 0  # predictions or labels that waited too long for their other half

    @property
    def enabled(self) -> bool:
        return bool(self.learners)

    @property
    def contenders(self) -> list[str]:
        """The online contenders, in order of preference on a tie."""
        voting = self.config.vote and len(self.learners) > 1
        return ([VOTE] if voting else []) + list(self.learners)

    # ------------------------------------------------------------------ serving

    def leader(self, champion: int | None) -> str:
        """Who answers now: "" for the champion, else an online learner's name."""
        contenders = ([champion_key(champion)] if champion is not None else []) + self.contenders
        best, best_accuracy = None, -1.0
        for key in contenders:
            board = self.boards.get(key)
            if board is None or board.scored < self.config.min_scored:
                continue
            accuracy = board.accuracy or 0.0
            if accuracy > best_accuracy:
                best, best_accuracy = key, accuracy
        if best is None:
            best = contenders[0] if contenders else ""
        return "" if champion is not None and best == champion_key(champion) else best

    def answer(self, learner: str, features: Features) -> Answer:
        """`learner`'s answer for one event (the prior before its first label)."""
        if not self.learnt:
            return self.prior()  # an untrained learner's probabilities say nothing
        x = learner_features(features)
        if learner == VOTE:
            positive = _mean_positive(
                learner.predict_proba_one(x) for learner in self.learners.values()
            )
            if positive is None:
                return self.prior()
            return Answer(VOTE, int(positive >= 0.5), positive)
        probabilities = self.learners[learner].predict_proba_one(x)
        if not probabilities:
            return self.prior()
        label = int(max(probabilities, key=lambda k: probabilities[k]))
        return Answer(learner, label, float(probabilities.get(1, 0.0)))

    def prior(self) -> Answer:
        """The majority class of the labels learnt so far (0 before any)."""
        if not self.classes:
            return Answer(PRIOR, 0, math.nan)
        label = self.classes.most_common(1)[0][0]
        return Answer(PRIOR, int(label), self.classes[1] / sum(self.classes.values()))

    # ------------------------------------------------------------------ evidence

    def observe(self, event_id: str, features: Features, champion: tuple[int, int] | None) -> None:
        """A served prediction, kept until its label; `champion` is the
        (version, label) the champion gave, when there was one."""
        if not self.enabled or event_id in self._waiting:
            return
        x = learner_features(features)
        # Scored at the label, the learners need not answer now.
        guesses = {} if self.config.score_at_label else self._guesses(x)
        if champion is not None:
            guesses[champion_key(champion[0])] = champion[1]
        label = self._early.pop(event_id, None)
        if label is not None:
            self._settle(_Waiting(x, guesses), label)
            return
        self._waiting[event_id] = _Waiting(x, guesses)
        self._trim(self._waiting)

    def label(self, event_id: str, label: int) -> None:
        """An event's label: its contenders scored, then learnt by every learner."""
        if not self.enabled:
            return
        waiting = self._waiting.pop(event_id, None)
        if waiting is None:
            self._early[event_id] = int(label)
            self._trim(self._early)
            return
        self._settle(waiting, int(label))

    def accuracies(self) -> dict[str, float | None]:
        return {key: board.accuracy for key, board in self.boards.items()}

    def _settle(self, waiting: _Waiting, label: int) -> None:
        guesses = waiting.guesses
        if self.config.score_at_label:
            # The learners as they are now, not as they were when the event was
            # served: still untaught on this label, and one label delay fresher.
            guesses = {k: v for k, v in guesses.items() if not k.startswith(ONLINE)}
            guesses |= self._guesses(waiting.x)
        for key, guess in guesses.items():
            board = self.boards.get(key)
            if board is None:
                board = self.boards[key] = self._board(key)
            resets = board.resets
            board.add(guess == label, self.config.min_scored)
            if board.resets > resets and self.config.forget_on_change:
                # The version's error rose: a change. What the learners did before
                # it says little about what they do after: keep their latest record.
                for other in self.boards.values():
                    if other.watch is None:
                        other.keep(self.config.forget_on_change)
        for learner in self.learners.values():
            learner.learn_one(waiting.x, label)
        self.classes[label] += 1
        self.learnt += 1

    def _guesses(self, x: dict[str, Any]) -> dict[str, int]:
        """Every online contender's answer for `x` (the prior until a label is learnt)."""
        answers = {name: learner.predict_proba_one(x) for name, learner in self.learners.items()}
        prior = self.prior().label
        if not self.learnt:
            answers = {name: {} for name in answers}
        guesses = {name: _top(probabilities, prior) for name, probabilities in answers.items()}
        if VOTE in self.contenders:
            positive = _mean_positive(answers.values())
            guesses[VOTE] = prior if positive is None else int(positive >= 0.5)
        return guesses

    def _board(self, key: str) -> Board:
        if key.startswith(ONLINE):
            return Board(self.config.window)
        from river import drift

        watch = drift.ADWIN(delta=self.config.version_delta)  # type: ignore[no-untyped-call]
        return Board(self.config.window, watch=watch)

    def _trim(self, queue: OrderedDict[str, Any]) -> None:
        while len(queue) > self.config.max_pending:
            queue.popitem(last=False)
            self.dropped += 1


def _top(probabilities: Mapping[Any, float], otherwise: int) -> int:
    """The most probable class; `otherwise` when the learner cannot answer yet."""
    if not probabilities:
        return otherwise
    return int(max(probabilities, key=lambda k: probabilities[k]))


def _mean_positive(answers: Iterable[Mapping[Any, float]]) -> float | None:
    """The mean probability of the positive class over the learners that can answer."""
    positives = [
        float(probabilities.get(1, 0.0)) / total
        for probabilities in answers
        if probabilities and (total := sum(probabilities.values())) > 0
    ]
    return sum(positives) / len(positives) if positives else None
