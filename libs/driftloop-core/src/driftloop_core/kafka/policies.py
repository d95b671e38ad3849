"""How a consumer's progress is kept: the four commit policies Driftloop needs.

* `CommitAfterBatch`: a group member that commits a fetched batch's offsets once
  every record in it was handled or dead-lettered (trainer, registry,
  ingestion; ingestion keeps two batches in flight, committed in order).
* `FlushThenCommit`: a group member that buffers what it takes and commits only
  after a durable flush, also when a rebalance takes partitions away (the
  feature store's offline log).
* `StoredOffsets`: no group and no commits; every partition is assigned and the
  positions are stored by the service with the state they updated (drift).
* `FromLatest`: a group of one, starting from the latest offsets and committing
  nothing; every assignment after the first calls `on_reassigned` so the service
  can catch up on what it missed (inference's promotions).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

# (topic, partition) -> the offset of the next record to read.
Positions = Mapping[tuple[str, int], int]


@dataclass(frozen=True)
class CommitAfterBatch:
    in_flight: int = 1

    def __post_init__(self) -> None:
        if self.in_flight not in (1, 2):
            raise ValueError("in_flight must be 1 or 2")


@dataclass(frozen=True)
class FlushThenCommit:
    flush: Callable[[], Awaitable[None]]
    records: int = 5000
    interval_s: float = 1.0

    def __post_init__(self) -> None:
        if self.records < 1 or self.interval_s <= 0:
            raise ValueError("flush records must be >= 1 and the interval > 0")


@dataclass(frozen=True)
class StoredOffsets:
    load: Callable[[], Awaitable[Positions]]
    store: Callable[[Positions], Awaitable[None]]


@dataclass(frozen=True)
class FromLatest:
    on_reassigned: Callable[[], Awaitable[None]] | None = None
    assignment_timeout_s: float = 15.0


Policy = CommitAfterBatch | FlushThenCommit | StoredOffsets | FromLatest
