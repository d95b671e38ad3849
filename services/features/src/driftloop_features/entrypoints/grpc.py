"""`driftloop.v1.FeatureService`: online lookups and point-in-time training sets.

Online lookups read the entity state the stream keeps (in memory, backed by
the Faust table), so they answer in well under a millisecond; training sets
are built by DuckDB over the offline Parquet log in a worker thread, keeping
the event loop free for lookups and the stream.

Ids are bounded like any request field: an entity id or a model name over
`MAX_ID_BYTES` (UTF-8) is INVALID_ARGUMENT naming the field, before any lookup.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from driftloop.v1 import features_pb2, features_pb2_grpc
from driftloop_core.feature_math import EntityState, FeatureMath, FeatureStatus
from driftloop_core.ids import MAX_ID_BYTES, oversized
from driftloop_core.values import fill_feature_value

from driftloop_features.adapters.duckdb_reader import OfflineStore, TrainingSetFile
from driftloop_features.offline import InvalidWindowError, UnknownModelError
from driftloop_features.routing import (
    ANSWERED_BY,
    FORWARDED_BY,
    ROUTED_TO,
    Routes,
    Unsettled,
    split_by_owner,
)

_STATUS = {
    FeatureStatus.PRESENT: features_pb2.FEATURE_STATUS_PRESENT,
    FeatureStatus.NOT_FOUND: features_pb2.FEATURE_STATUS_NOT_FOUND,
    FeatureStatus.STALE: features_pb2.FEATURE_STATUS_STALE,
}
MAX_ENTITIES = 1000
# Validated feature-name lists, by what callers send (most send the same few).
MAX_CACHED_NAME_LISTS = 256


class FeatureServicer(features_pb2_grpc.FeatureServiceServicer):
    def __init__(
        self,
        math: FeatureMath,
        state_of: Callable[[str], EntityState | None],
        offline: OfflineStore,
        ready: Callable[[], bool] = lambda: True,
        routes: Routes | None = None,
    ) -> None:
        self._math = math
        self._state_of = state_of
        self._offline = offline
        self._ready = ready
        # Several workers: each entity is answered by the owner of its partition.
        self._routes = routes
        self._names: dict[tuple[str, ...], tuple[str, ...]] = {}
        self._known = frozenset(math.feature_names)

    def _valid_names(self, requested: tuple[str, ...]) -> tuple[str, ...] | list[str]:
        """The names to serve, or the unknown ones (a list) when any is unknown."""
        names = self._names.get(requested)
        if names is not None:
            return names
        unknown = [n for n in requested if n not in self._known]
        if unknown:
            return unknown
        names = requested or tuple(self._math.feature_names)
        if len(self._names) < MAX_CACHED_NAME_LISTS:
            self._names[requested] = names
        return names

    async def GetOnlineFeatures(
        self,
        request: features_pb2.GetOnlineFeaturesRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> features_pb2.GetOnlineFeaturesResponse:
        if not self._ready():
            # Until the table is recovered every entity would look unknown, and a
            # caller applying defaults for "not found" would predict on them.
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, "the feature store is recovering its entity table"
            )
        if not request.entity_ids:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "entity_ids: must not be empty")
        if len(request.entity_ids) > MAX_ENTITIES:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"entity_ids: at most {MAX_ENTITIES} per call, got {len(request.entity_ids)}",
            )
        for index, entity_id in enumerate(request.entity_ids):
            size = oversized(entity_id)
            if size is not None:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"entity_ids[{index}]: at most {MAX_ID_BYTES} bytes, got {size}",
                )
        names = self._valid_names(tuple(request.feature_names))
        if isinstance(names, list):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"feature_names: unknown feature(s) {', '.join(names)}; "
                f"known: {', '.join(self._math.feature_names)}",
            )
        as_of = request.as_of.ToMilliseconds() if request.HasField("as_of") else None
        routes = self._routes
        if routes is None:
            return self._answer(request.entity_ids, names, as_of)
        try:
            mine, others = split_by_owner(routes.ownership, request.entity_ids)
        except Unsettled as error:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"{error}; retry")
        if not others:
            context.set_trailing_metadata(((ANSWERED_BY, routes.ownership.me),))
            return self._answer(request.entity_ids, names, as_of)
        return await self._gather(request, mine, others, names, as_of, context)

    def _answer(
        self, entity_ids: Sequence[str], names: Sequence[str], as_of: int | None
    ) -> features_pb2.GetOnlineFeaturesResponse:
        """The lookup, answered from this worker's entity states."""
        now_ms = int(time.time() * 1000)
        not_found = features_pb2.FEATURE_STATUS_NOT_FOUND
        response = features_pb2.GetOnlineFeaturesResponse()
        for entity_id in entity_ids:
            entry = response.entities.add(entity_id=entity_id)
            statuses = entry.statuses
            state = self._state_of(entity_id)
            if state is None or state.empty:
                for name in names:
                    statuses[name] = not_found
                continue
            values, status = self._math.lookup(state, names, as_of_ms=as_of, now_ms=now_ms)
            found = _STATUS[status]
            entry_values = entry.values
            for name in names:
                value = values.get(name)
                if value is None:
                    statuses[name] = not_found
                else:
                    fill_feature_value(entry_values[name], value)
                    statuses[name] = found
            entry.updated_at.FromMilliseconds(state.latest_time_ms)
        return response

    async def _gather(
        self,
        request: features_pb2.GetOnlineFeaturesRequest,
        mine: list[str],
        others: dict[str, list[str]],
        names: Sequence[str],
        as_of: int | None,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> features_pb2.GetOnlineFeaturesResponse:
        """Answer for this worker's entities; ask each other owner for its own."""
        assert self._routes is not None
        me = self._routes.ownership.me
        if any(key == FORWARDED_BY for key, _ in context.invocation_metadata() or ()):
            # Ownership moved between the sender's view and ours: the sender's
            # caller retries once the group has settled.
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"entity_ids: {next(iter(others.values()))[0]!r} is no longer owned by "
                f"worker {me} (a rebalance is under way); retry",
            )
        asked = []
        for target, entity_ids in others.items():
            forwarded = features_pb2.GetOnlineFeaturesRequest(
                entity_ids=entity_ids, feature_names=request.feature_names
            )
            if request.HasField("as_of"):
                forwarded.as_of.CopyFrom(request.as_of)
            asked.append(self._routes.forwarder.lookup(target, forwarded, context.time_remaining()))
        try:
            replies = await asyncio.gather(*asked)
        except grpc.aio.AioRpcError as error:
            await context.abort(
                error.code(), f"the worker owning some entity_ids answered: {error.details()}"
            )
        context.set_trailing_metadata(((ANSWERED_BY, me), (ROUTED_TO, ",".join(sorted(others)))))
        if not mine and len(replies) == 1:
            return replies[0]
        entries = {
            entry.entity_id: entry
            for reply in (self._answer(mine, names, as_of), *replies)
            for entry in reply.entities
        }
        response = features_pb2.GetOnlineFeaturesResponse()
        for entity_id in request.entity_ids:
            response.entities.add().CopyFrom(entries[entity_id])
        return response

    async def GetTrainingSet(
        self,
        request: features_pb2.GetTrainingSetRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> features_pb2.GetTrainingSetResponse:
        size = oversized(request.model)
        if size is not None:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"model: at most {MAX_ID_BYTES} bytes, got {size}",
            )
        try:
            result = await asyncio.to_thread(
                self._offline.training_set,
                request.window if request.HasField("window") else None,
                model=request.model or None,
                include_rows=request.include_rows,
            )
        except UnknownModelError as error:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(error))
        except InvalidWindowError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        return training_set_response(result)


def training_set_response(training_set: TrainingSetFile) -> features_pb2.GetTrainingSetResponse:
    """The GetTrainingSet reply: the dataset, its feature columns, and rows if asked."""
    return features_pb2.GetTrainingSetResponse(
        dataset=training_set.dataset(),
        feature_names=list(training_set.feature_names),
        rows=list(training_set.rows or ()),
    )
