"""The `training.requested` consumer: decode, deduplicate, run, publish the outcome.

One run at a time per model (a lock per model name); a request id that was
finished before publishes nothing new. A run that fails publishes
`TrainingFailed` with its stage and reason and the consumer moves on. A
request that cannot be run at all (it does not decode, or fails
`validation.check_request`: ids missing or too long, an unknown trigger, a time
no Timestamp holds) is dead-lettered naming the field and the rule, before
anything is looked up.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from driftloop.v1 import events_pb2
from driftloop_core.kafka import ConsumerLoop, PoisonMessage, Publisher, Record, Topics
from driftloop_core.logging import get_logger
from driftloop_core.settings import Settings
from google.protobuf.message import DecodeError

from driftloop_trainer.adapters.ledger import RequestLedger
from driftloop_trainer.handlers import TrainingRunner
from driftloop_trainer.metrics import RUN_SECONDS, RUNS
from driftloop_trainer.training import TrainingError
from driftloop_trainer.validation import InvalidRequest, check_request

log = get_logger(__name__)

GROUP_ID = "driftloop-trainer"
# Fixed namespace so that event ids derived from a request id are stable across
# processes and restarts.
_EVENT_NAMESPACE = uuid.UUID("6b1f3a52-8f0e-4d0a-9a53-5f7d2c1e9b10")


def outcome_event_id(request_id: str, outcome: str) -> str:
    """The CloudEvents id of a request's outcome: the same on every replay."""
    return uuid.uuid5(_EVENT_NAMESPACE, f"{outcome}/{request_id}").hex


class TrainingRequests:
    """Handles `TrainingRequested` records; `handle` is the consumer's handler."""

    def __init__(
        self,
        runner: TrainingRunner,
        publisher: Publisher,
        ledger: RequestLedger,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._runner = runner
        self._publisher = publisher
        self._ledger = ledger
        self._clock = clock
        self._locks: dict[str, asyncio.Lock] = {}

    async def handle(self, record: Record) -> None:
        request = events_pb2.TrainingRequested()
        try:
            request.ParseFromString(record.value)
        except DecodeError as error:
            raise PoisonMessage(f"not a TrainingRequested: {error}", rule="decode") from None
        try:
            check_request(request)
        except InvalidRequest as error:
            raise PoisonMessage(
                str(error), field=error.field, rule=error.rule, event_id=record.headers.id
            ) from None
        lock = self._locks.setdefault(request.model, asyncio.Lock())
        async with lock:
            await self._handle(request)

    async def _handle(self, request: events_pb2.TrainingRequested) -> None:
        done = await asyncio.to_thread(self._ledger.outcome, request.request_id)
        trigger = events_pb2.TrainingTrigger.Name(request.trigger)
        if done is not None:
            RUNS.labels(request.model, trigger, "replayed").inc()
            log.info(
                "training_request_replayed",
                request_id=request.request_id,
                model=request.model,
                outcome=done,
            )
            return
        log.info(
            "training_started",
            request_id=request.request_id,
            model=request.model,
            reason=request.reason,
            trigger=trigger,
        )
        started = time.perf_counter()
        try:
            trained = await self._runner.run(request)
        except TrainingError as error:
            await self._fail(request, error)
            RUNS.labels(request.model, trigger, "failed").inc()
            RUN_SECONDS.labels(request.model, "failed").observe(time.perf_counter() - started)
            return
        event_id = outcome_event_id(request.request_id, "trained")
        await self._publisher.publish_event(trained, key=request.model, event_id=event_id)
        await asyncio.to_thread(
            self._ledger.record, request.request_id, request.model, "trained", event_id
        )
        RUNS.labels(request.model, trigger, "trained").inc()
        RUN_SECONDS.labels(request.model, "trained").observe(time.perf_counter() - started)
        log.info(
            "training_finished",
            request_id=request.request_id,
            model=request.model,
            sha256=trained.artifact.sha256,
            metrics=dict(trained.metrics),
            champion_version=trained.champion_version
            if trained.HasField("champion_version")
            else None,
        )

    async def _fail(self, request: events_pb2.TrainingRequested, error: TrainingError) -> None:
        failed = events_pb2.TrainingFailed(
            request_id=request.request_id,
            model=request.model,
            stage=error.stage,
            reason=error.reason,
        )
        failed.failed_at.FromDatetime(self._clock())
        event_id = outcome_event_id(request.request_id, "failed")
        await self._publisher.publish_event(failed, key=request.model, event_id=event_id)
        await asyncio.to_thread(
            self._ledger.record, request.request_id, request.model, "failed", event_id
        )
        log.warning(
            "training_failed",
            request_id=request.request_id,
            model=request.model,
            stage=error.stage,
            reason=error.reason,
        )


def build_consumer(
    settings: Settings,
    requests: TrainingRequests,
    publisher: Publisher,
    *,
    topic: str = Topics.TRAINING_REQUESTED,
    group_id: str = GROUP_ID,
    deadletter_topic: str = Topics.DEADLETTER,
) -> ConsumerLoop:
    return ConsumerLoop(
        settings,
        topics=[topic],
        group_id=group_id,
        handle=requests.handle,
        publisher=publisher,
        deadletter_topic=deadletter_topic,
    )
