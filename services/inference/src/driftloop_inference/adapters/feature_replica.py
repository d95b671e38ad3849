"""A replica of the feature store's entity table, read from its changelog.

Predict needs the entity's features as of its event. Asked over gRPC, that is
a call to another process per Predict: a client span, a server span, two
serialisations and a wait for the feature store's event loop, which is busy
counting the stream; profiled, about half of Predict's cost. The feature store
already writes each entity's state to its table's changelog (compacted, keyed
by entity, once per batch it counts). The replica reads that changelog — every
partition, from the beginning, in no consumer group — into memory, and answers
a lookup in-process with the same arithmetic (`driftloop_core.feature_math`).

* **Every entity, on every inference process**, whichever feature-store worker
  owns its partition: a lookup never lands on a worker without the entity.
* **As fresh as the changelog.** The store writes an entity's state after each
  batch (through Faust's producer buffer); the replica fetches it with a short
  fetch wait (`fetch_max_wait_ms`). One event at a time, the changelog trails
  the store's table by a few milliseconds (measured: 553 ms from `events.raw`
  to the changelog, 548 ms to a gRPC lookup, p50). Under the demo's steady
  stream it trails by more: 44% of Predicts saw an older state of the entity
  than a gRPC lookup would have (3%). That is why `events` (below) is the
  default (`DRIFTLOOP_INFERENCE_FEATURES_SOURCE`), not this changelog copy.
* **Until caught up, the feature store answers.** At start the replica notes
  the changelog's end offsets; until it has read up to them, lookups go over
  gRPC as before, so a restarted process never answers from a half-read table.
* **A new broker is a new stream.** The embedded broker starts empty after a
  restart, with a new cluster id, and the topic is written again from offset 0
  (the store, restarted on it, counts from nothing). The replica asks the
  broker's cluster id every `broker_check_s`; when it changes, lookups go to
  the feature store again, and between two fetches the replica forgets every
  state and reads the topic from its beginning, ready once caught up. Kept
  states would refuse the new offsets as replays of positions already counted.
* **Memory**: the encoded state of every entity (the JSON the store writes,
  1-60 KiB by activity) plus the decoded states of the most recently looked-up
  `decoded_cache` entities.

`EventsReplica` (`DRIFTLOOP_INFERENCE_FEATURES_SOURCE=events`, the default) reads
`events.valid` instead, the stream the store itself counts, and counts every
observation with the same arithmetic: its states are the store's, without the
wait for the store's batch to reach the changelog. It costs what counting
costs (tens of microseconds an event, in every inference process) and 4-5 KiB
of memory per entity; it reads the topic from its beginning at start.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from aiokafka.errors import KafkaError
from driftloop.v1 import common_pb2, events_pb2
from driftloop_core.broker import cluster_id
from driftloop_core.feature_math import EntityState, FeatureMath
from driftloop_core.featureset import FeatureSet
from driftloop_core.kafka.loop import ConsumerLoop
from driftloop_core.kafka.policies import Positions, StoredOffsets
from driftloop_core.kafka.publisher import Publisher
from driftloop_core.kafka.record import PoisonMessage, Record
from driftloop_core.kafka.topics import kind_of_message
from driftloop_core.logging import get_logger
from driftloop_core.settings import Settings
from driftloop_core.values import fill_feature_value, from_feature_value
from google.protobuf.timestamp_pb2 import Timestamp

from driftloop_inference.adapters.arena_feed import latest_positions
from driftloop_inference.adapters.features import FeatureClient

log = get_logger(__name__)

GROUP_ID = "driftloop-inference-features-replica"  # never joined: the loop only assigns
# A changelog write reaches the replica within this much more than its fetch.
FETCH_MAX_WAIT_MS = 5
OBSERVED = kind_of_message("driftloop.v1.Observation").ce_type


class FeatureReplica:
    """`FeatureClient.online`, answered from the changelog once caught up."""

    def __init__(
        self,
        settings: Settings,
        featureset: FeatureSet,
        changelog: str,
        remote: FeatureClient,
        publisher: Publisher,
        *,
        decoded_cache: int = 10_000,
        broker_check_s: float = 2.0,
    ) -> None:
        self._settings = settings
        self._broker_check_s = broker_check_s
        self._cluster: str | None = None
        self._rewind_pending = False
        self._next_rewind_at = 0.0
        self.rewinds = 0
        self._math = FeatureMath(featureset)
        self._changelog = changelog
        self._remote = remote
        self._encoded: dict[str, bytes] = {}
        self._decoded: OrderedDict[str, EntityState] = OrderedDict()
        self._decoded_cache = decoded_cache
        self._ends: Positions | None = None
        self._behind: set[tuple[str, int]] = set()
        self.ready = False
        self.applied = 0
        self.loop = ConsumerLoop(
            settings,
            topics=[changelog],
            group_id=GROUP_ID,
            # Never used: the handler dead-letters nothing.
            publisher=publisher,
            handle_batch=self._apply,
            after_poll=self._after_poll,
            policy=StoredOffsets(self._from_beginning, self._keep_nothing),
            client_suffix="features-replica",
            consumer_options={"fetch_max_wait_ms": FETCH_MAX_WAIT_MS},
        )

    @property
    def target(self) -> str:
        return f"{self._remote.target} (replica of {self._changelog})"

    @property
    def entities(self) -> int:
        return len(self._encoded)

    async def start(self) -> None:
        """Note the broker and where the topic ends now, then start reading it
        from its beginning."""
        self._cluster = await cluster_id(self._settings.kafka)
        await self._note_ends()
        log.info(
            "feature_replica_starting",
            topic=self._changelog,
            cluster_id=self._cluster,
            partitions=len(self._ends or {}),
            records=sum((self._ends or {}).values()),
        )
        self._check_ready()
        await self.loop.start()

    async def _note_ends(self) -> None:
        self._set_ends(await latest_positions(self._settings, [self._changelog]))

    def _set_ends(self, ends: Positions) -> None:
        """Where the topic ends: ready once every non-empty partition is read that far."""
        self._ends = ends
        self._behind = {key for key, end in ends.items() if end > 0}

    async def watch_broker(self) -> None:
        """Until cancelled: every `broker_check_s`, whether the broker is still
        the one read from; a new one (a new cluster id) sends lookups back to
        the feature store and the replica back to the topic's beginning."""
        while True:
            await asyncio.sleep(self._broker_check_s)
            try:
                current = await cluster_id(self._settings.kafka, timeout_s=self._broker_check_s)
            except Exception as exc:  # noqa: BLE001 - a broker away is asked again later
                log.debug("feature_replica_broker_unreachable", error=str(exc))
                continue
            if current and current != self._cluster:
                log.warning(
                    "feature_replica_new_broker",
                    was=self._cluster,
                    now=current,
                    why="the topic starts over: states are read again from its beginning",
                )
                self._cluster = current
                self.ready = False
                self._rewind_pending = True  # done by the loop after its next poll

    async def _rewind(self) -> None:
        """Forget every state and read the topic again from its beginning, once
        the new broker has the topic (until then, tried again every
        `broker_check_s`)."""
        if time.monotonic() < self._next_rewind_at:
            return
        self._next_rewind_at = time.monotonic() + self._broker_check_s
        try:
            ends = await latest_positions(self._settings, [self._changelog])
            if not ends:
                log.info("feature_replica_waiting_for_topic", topic=self._changelog)
                return
            partitions = await self.loop.rewind()
        except KafkaError as exc:
            log.warning("feature_replica_rewind_failed", error=str(exc))
            return
        self._rewind_pending = False
        self._forget_all()
        self.applied = 0
        self._set_ends(ends)
        self.rewinds += 1
        log.info("feature_replica_rewound", partitions=partitions, records=sum(ends.values()))
        self._check_ready()

    def _forget_all(self) -> None:
        self._encoded.clear()
        self._decoded.clear()

    async def close(self) -> None:
        await self._remote.close()

    async def online(
        self, entity_id: str, names: list[str], as_of: Timestamp | None, timeout_s: float | None
    ) -> Mapping[str, common_pb2.FeatureValue]:
        """The entity's values as `FeatureClient.online` gives them: from the
        replica once it has caught up, from the feature store before."""
        if not self.ready:
            return await self._remote.online(entity_id, names, as_of, timeout_s)
        state = self._state(entity_id)
        if state is None or state.empty:
            return {}
        as_of_ms = as_of.ToMilliseconds() if as_of is not None else None
        values, _ = self._math.lookup(
            state,
            names or self._math.feature_names,  # none named: all, as GetOnlineFeatures
            as_of_ms=as_of_ms,
            now_ms=int(time.time() * 1000),
        )
        out: dict[str, common_pb2.FeatureValue] = {}
        for name, value in values.items():
            fill_feature_value(out.setdefault(name, common_pb2.FeatureValue()), value)
        return out

    def _state(self, entity_id: str) -> EntityState | None:
        state = self._decoded.get(entity_id)
        if state is not None:
            self._decoded.move_to_end(entity_id)
            return state
        encoded = self._encoded.get(entity_id)
        if encoded is None:
            return None
        state = EntityState.from_json(json.loads(encoded))
        self._decoded[entity_id] = state
        if len(self._decoded) > self._decoded_cache:
            self._decoded.popitem(last=False)
        return state

    async def _apply(self, records: Sequence[Record]) -> Sequence[PoisonMessage | None]:
        """Count the records in hand; after a broker change, drop them: the
        loop reads the topic again from its beginning after this poll."""
        if not self._rewind_pending:
            self._apply_records(records)
            self._caught_up(records)
        return [None] * len(records)

    async def _after_poll(self) -> None:
        # In the loop's own task, between two fetches: no batch is in hand, and
        # records fetched for the old assignment are never handed out.
        if self._rewind_pending:
            await self._rewind()

    def _apply_records(self, records: Sequence[Record]) -> None:
        for record in records:
            try:
                entity_id = json.loads(record.key) if record.key is not None else None
            except ValueError:
                entity_id = None
            if not isinstance(entity_id, str):
                log.warning("replica_record_skipped", offset=record.offset, why="key")
                continue
            self._decoded.pop(entity_id, None)
            if record.value:
                self._encoded[entity_id] = record.value
            else:  # a tombstone: the entity is gone
                self._encoded.pop(entity_id, None)
            self.applied += 1

    def _caught_up(self, records: Sequence[Record]) -> None:
        if not self.ready and records:
            for record in records:
                key = (record.topic, record.partition)
                if self._ends is not None and record.offset + 1 >= self._ends.get(key, 0):
                    self._behind.discard(key)
            self._check_ready()

    def _check_ready(self) -> None:
        if not self.ready and self._ends is not None and not self._behind:
            self.ready = True
            log.info("feature_replica_ready", entities=len(self._encoded), applied=self.applied)

    async def _from_beginning(self) -> dict[Any, int]:
        return {}

    async def _keep_nothing(self, positions: Mapping[Any, int]) -> None:
        return None


class EventsReplica(FeatureReplica):
    """The entity states counted here from `events.valid`, as the store counts them."""

    def __init__(
        self,
        settings: Settings,
        featureset: FeatureSet,
        topic: str,
        remote: FeatureClient,
        publisher: Publisher,
        *,
        broker_check_s: float = 2.0,
    ) -> None:
        super().__init__(
            settings, featureset, topic, remote, publisher, broker_check_s=broker_check_s
        )
        self._states: dict[str, EntityState] = {}

    @property
    def entities(self) -> int:
        return len(self._states)

    def _state(self, entity_id: str) -> EntityState | None:
        return self._states.get(entity_id)

    def _forget_all(self) -> None:
        self._states.clear()

    def _apply_records(self, records: Sequence[Record]) -> None:
        now_ms = int(time.time() * 1000)
        for record in records:
            if record.headers.type != OBSERVED:
                continue  # labels change no feature
            try:
                observation = events_pb2.Observation.FromString(record.value)
            except Exception:  # noqa: BLE001 - the store dead-letters it; nothing to count
                continue
            values = {
                name: plain
                for name, value in observation.values.items()
                if (plain := from_feature_value(value)) is not None
            }
            state = self._states.get(observation.entity_id)
            if state is None:
                state = self._states[observation.entity_id] = EntityState.from_json(None)
            # Replays, late and future events are refused here as in the store.
            self._math.apply(
                state,
                observation.event_id,
                observation.event_time.ToMilliseconds(),
                values,
                now_ms=now_ms,
                position=(record.partition, record.offset),
            )
            self.applied += 1
