"""Which partitions a consumer reads and from where, and what it may commit.

The parts of `ConsumerLoop` that talk to the group and the partitions: assign
every partition at stored positions (no group), wait for a group's first
assignment, hand rebalances to the loop, and commit only what this member
still owns, with the lag gauge after each commit.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import structlog
from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError

from driftloop_core.kafka.consumer import LAG
from driftloop_core.kafka.policies import Positions

log = structlog.get_logger(__name__)


async def assign_all(
    consumer: Any, topics: Iterable[str], stored: Positions
) -> dict[TopicPartition, int]:
    """Assign every partition of `topics`, each at its stored position or at the
    beginning; returns the stored positions used."""
    await consumer.topics()
    partitions = [
        TopicPartition(topic, partition)
        for topic in topics
        for partition in sorted(consumer.partitions_for_topic(topic) or ())
    ]
    consumer.assign(partitions)
    used: dict[TopicPartition, int] = {}
    fresh = []
    for tp in partitions:
        position = stored.get((tp.topic, tp.partition))
        if position is None:
            fresh.append(tp)
        else:
            consumer.seek(tp, position)
            used[tp] = position
    if fresh:
        await consumer.seek_to_beginning(*fresh)
    return used


async def first_assignment(consumer: Any, group: str, timeout_s: float) -> None:
    """Wait for the group's first assignment and fix its positions."""
    deadline = time.monotonic() + timeout_s
    while not consumer.assignment():
        if time.monotonic() > deadline:
            # The assignment that comes later catches up like a rejoin.
            log.warning("assignment_slow", group=group)
            return
        # getmany drives the group join; nothing is returned before assignment.
        await consumer.getmany(timeout_ms=100)
    for tp in consumer.assignment():
        await consumer.position(tp)


async def known_positions(consumer: Any, partitions: Iterable[TopicPartition]) -> bool:
    """Wait until the positions of `partitions` are known; False when the
    consumer was reassigned again meanwhile."""
    try:
        for tp in partitions:
            await consumer.position(tp)
    except IllegalStateError:
        return False
    return True


async def commit_owned(consumer: Any, group: str, positions: dict[TopicPartition, int]) -> None:
    """Commit what this member still owns; a commit the group refuses is logged
    and skipped (the partitions' next owner reads those records again)."""
    owned = consumer.assignment()
    lost = [tp for tp in positions if tp not in owned]
    if lost:
        log.warning("commit_skipped_after_rebalance", partitions=sorted(map(str, lost)))
        positions = {tp: p for tp, p in positions.items() if tp in owned}
    if not positions:
        return
    try:
        await consumer.commit(positions)
    except (CommitFailedError, IllegalStateError) as error:
        log.warning(
            "commit_refused",
            group=group,
            partitions=sorted(str(tp) for tp in positions),
            error=type(error).__name__,
            meaning="the group moved on without this member: its records are read again",
        )
        return
    record_lag(consumer, group, positions)


def record_lag(consumer: Any, group: str, positions: dict[TopicPartition, int]) -> None:
    for tp, position in positions.items():
        highwater = consumer.highwater(tp)
        if highwater is not None:
            LAG.labels(group, tp.topic, str(tp.partition)).set(max(highwater - position, 0))


class Rebalances(ConsumerRebalanceListener):  # type: ignore[misc]
    """aiokafka's rebalance callbacks, handed on."""

    def __init__(
        self,
        on_revoked: Callable[[], Awaitable[None]],
        on_assigned: Callable[[set[TopicPartition]], None],
    ) -> None:
        self._on_revoked = on_revoked
        self._on_assigned = on_assigned

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._on_revoked()

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._on_assigned(set(assigned))
