"""A rollout candidate's answer to every Predict, scored once the caller has its own.

While a rollout is open and its candidate loaded (`rollouts.py`), a Predict
that a registered version answered hands back, beside its Decision, a job for
after the reply. The Predictor entrypoint runs it once the call has ended:
gRPC calls it after the response and the status were sent, so the caller's
latency never includes the candidate. The job scores the candidate through the
batcher on exactly the inputs the champion was fed (the same arrays when the
two signatures agree; else filled from the same request and online values,
with no second lookup), and offers a Prediction to the same bounded
predictions buffer as the champion's: `shadow` true, the rollout's id, the
candidate's version, label and probability, the champion's event id, entity,
event time, features and defaults, and as `latency` the candidate's own
scoring time (its wait in the batching queue and its run). Drift pairs the two
by event id to judge the rollout.

Callers come first. While the batching queue is at least half full the shadow
is skipped, so shadows never take the room that makes callers'
requests RESOURCE_EXHAUSTED; and a candidate that fails on an input (or
answers a probability that is not finite) publishes nothing. Both are counted
as dropped predictions (`shadow_busy`, `shadow_failed`); the caller saw
nothing of either. No shadow is scored once the candidate has become the
champion (promoted before its rollout's end reached this process).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from typing import Protocol

import structlog
from driftloop.v1 import common_pb2

from driftloop_inference.batching import Batcher
from driftloop_inference.dataplane import (
    AfterReply,
    PredictionOutbox,
    PredictRequest,
    VersionAnswer,
    new_prediction,
    stamp_prediction,
)
from driftloop_inference.metrics import PREDICTIONS_DROPPED, SHADOW_PREDICTIONS, SHADOW_SECONDS
from driftloop_inference.model import Array, ServedModel
from driftloop_inference.predict import Defaults, decide, feature_inputs
from driftloop_inference.rollouts import Candidate

log = structlog.get_logger(__name__)


class Candidates(Protocol):
    """Where the loaded candidate is (rollouts.Rollouts)."""

    @property
    def candidate(self) -> Candidate | None: ...


class ShadowScorer:
    """Scores the loaded candidate after each reply and publishes its answer."""

    def __init__(
        self,
        candidates: Candidates,
        batcher: Batcher,
        outbox: PredictionOutbox,
        defaults: Defaults,
    ) -> None:
        self._candidates = candidates
        self._batcher = batcher
        self._outbox = outbox
        self._defaults = defaults
        # Jobs in flight, held so the event loop does not drop them.
        self._tasks: set[asyncio.Task[None]] = set()

    def after_reply(
        self, champion: ServedModel, request: PredictRequest, answer: VersionAnswer
    ) -> AfterReply | None:
        """The shadow job for `champion`'s answer, or None without a candidate
        (or when the candidate is the version that answered)."""
        candidate = self._candidates.candidate
        if candidate is None or candidate.model.version == champion.version:
            return None
        return functools.partial(self._start, candidate, champion, request, answer)

    def _start(
        self,
        candidate: Candidate,
        champion: ServedModel,
        request: PredictRequest,
        answer: VersionAnswer,
    ) -> None:
        job = self._score(candidate, champion, request, answer)
        task = asyncio.get_running_loop().create_task(job, name="shadow")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _score(
        self,
        candidate: Candidate,
        champion: ServedModel,
        request: PredictRequest,
        answer: VersionAnswer,
    ) -> None:
        batcher = self._batcher
        if batcher.depth * 2 >= batcher.capacity:
            PREDICTIONS_DROPPED.labels("shadow_busy").inc()
            return
        model = candidate.model
        started = time.perf_counter()
        try:
            feeds, used, missing = self._inputs(model, champion, request, answer)
            outputs = await batcher.infer(model, feeds, 1, None)
            label, probability = decide(model, outputs)
        except Exception as error:  # noqa: BLE001 - a shadow must never fail anything else
            PREDICTIONS_DROPPED.labels("shadow_failed").inc()
            log.warning(
                "shadow_prediction_failed",
                model=model.name,
                version=model.version,
                rollout_id=candidate.rollout_id,
                event_id=request.event_id,
                error=str(error) or type(error).__name__,
            )
            return
        seconds = time.perf_counter() - started
        prediction = new_prediction(request, model.name, used, missing)
        prediction.model_version = model.version
        prediction.label = label
        prediction.probability = probability
        prediction.shadow = True
        prediction.rollout_id = candidate.rollout_id
        stamp_prediction(prediction, request, seconds)
        self._outbox.offer(prediction)
        SHADOW_PREDICTIONS.labels(model.name, model.version_str).inc()
        SHADOW_SECONDS.labels(model.name).observe(seconds)

    def _inputs(
        self,
        model: ServedModel,
        champion: ServedModel,
        request: PredictRequest,
        answer: VersionAnswer,
    ) -> tuple[dict[str, Array], dict[str, common_pb2.FeatureValue], list[str]]:
        """The candidate's inputs: the champion's own when the signatures agree,
        else filled from the same request and online values."""
        if model.inputs == champion.inputs:
            return answer.feeds, answer.used, answer.missing
        return feature_inputs(model, request.features, answer.online, self._defaults)

    async def stop(self, grace_s: float = 1.0) -> None:
        """Give the jobs in flight a moment to publish, then cancel the rest."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=grace_s)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await task
