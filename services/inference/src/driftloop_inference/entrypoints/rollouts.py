"""`models.rollouts` in: every inference process follows every rollout of its model.

The topic is small and kept forever, so each process reads all of it: every
partition from its beginning, by assignment in no consumer group (as the
feature replica reads its topic), committing nothing. A process started during
a rollout so learns it, and every replica and worker sees every event. At start
the listener notes where the topic ends; until it has read that far, events
only say which rollout is open (the latest one started and not ended), and
then the candidate of the one left open is loaded (`Rollouts.caught_up`).
After that, each event acts as it arrives.

Records go by their CloudEvents type: a `ModelRolloutStarted` or
`ModelRolloutEnded` of this process's model moves its rollout; drift's
`RolloutJudged` (the registry acts on it, and then ends the rollout), other
types and other models' events are skipped. A record that does not decode is
logged as `rollout_record_skipped` and skipped, never dead-lettered: the
registry and drift own the topic, and every process would dead-letter it again
each time it starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import structlog
from driftloop.v1 import events_pb2
from driftloop_core.kafka import ConsumerLoop, Publisher, Record, StoredOffsets
from driftloop_core.kafka.topics import kind_of_message
from driftloop_core.settings import Settings
from google.protobuf.message import DecodeError, Message

from driftloop_inference.adapters.arena_feed import latest_positions
from driftloop_inference.rollouts import Rollouts

log = structlog.get_logger(__name__)

# The name the loop's metrics and spans carry; the reader itself joins no group.
GROUP_ID = "driftloop-inference-rollouts"
STARTED = kind_of_message("driftloop.v1.ModelRolloutStarted").ce_type
ENDED = kind_of_message("driftloop.v1.ModelRolloutEnded").ce_type
M = TypeVar("M", bound=Message)


class RolloutListener:
    """Reads `topic` from its beginning into `rollouts`, then follows it."""

    def __init__(
        self, settings: Settings, topic: str, rollouts: Rollouts, publisher: Publisher
    ) -> None:
        self._settings = settings
        self._topic = topic
        self._rollouts = rollouts
        # (topic, partition) -> where the partition ended at start, until read that far.
        self._behind: dict[tuple[str, int], int] = {}
        self.skipped = 0
        self.loop = ConsumerLoop(
            settings,
            topics=[topic],
            group_id=GROUP_ID,
            # Never used: the handler dead-letters nothing.
            publisher=publisher,
            handle=self._handle,
            after_poll=self._after_poll,
            policy=StoredOffsets(self._from_beginning, self._keep_nothing),
            client_suffix="rollouts",
        )

    async def start(self) -> None:
        """Note where the topic ends now, then start reading it from its beginning."""
        ends = await latest_positions(self._settings, [self._topic])
        self._behind = {key: end for key, end in ends.items() if end > 0}
        log.info("rollouts_reading", topic=self._topic, records=sum(ends.values()))
        await self.loop.start()

    async def _handle(self, record: Record) -> None:
        try:
            await self._apply(record)
        finally:
            self._passed(record)

    async def _apply(self, record: Record) -> None:
        model = self._rollouts.model_name
        if record.headers.type == STARTED:
            started = self._decode(events_pb2.ModelRolloutStarted, record)
            if started is not None and started.model == model:
                log.info(
                    "rollout_started_received",
                    model=model,
                    rollout_id=started.rollout_id,
                    candidate_version=started.candidate_version,
                    champion_version=started.champion_version,
                    live=self._rollouts.live,
                )
                await self._rollouts.started(started)
        elif record.headers.type == ENDED:
            ended = self._decode(events_pb2.ModelRolloutEnded, record)
            if ended is not None and ended.model == model:
                log.info(
                    "rollout_ended_received",
                    model=model,
                    rollout_id=ended.rollout_id,
                    outcome=events_pb2.RolloutOutcome.Name(ended.outcome),
                    live=self._rollouts.live,
                )
                self._rollouts.ended(ended)

    def _decode(self, cls: type[M], record: Record) -> M | None:
        """The record's value as `cls`; None (logged and counted) when it is not one."""
        try:
            return cls.FromString(record.value)
        except DecodeError as error:
            self.skipped += 1
            log.warning(
                "rollout_record_skipped",
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                reason=f"value is not a {cls.DESCRIPTOR.full_name}: {error}",
            )
            return None

    def _passed(self, record: Record) -> None:
        key = (record.topic, record.partition)
        end = self._behind.get(key)
        if end is not None and record.offset + 1 >= end:
            del self._behind[key]

    async def _after_poll(self) -> None:
        # In the loop's own task, between two fetches: the history is read once
        # no partition is behind where it ended at start.
        if not self._rollouts.live and not self._behind:
            await self._rollouts.caught_up()

    async def _from_beginning(self) -> dict[Any, int]:
        return {}

    async def _keep_nothing(self, positions: Mapping[Any, int]) -> None:
        return None
