"""`driftloop.v1.IngestService`: raw events over gRPC, judged as on `events.raw`.

A thin adapter: it turns requests into `Incoming` events, hands them to the
ingestor and turns outcomes into replies. `Ingest` answers one event (a label
whose observation has not arrived is accepted with `held`; a
rejection is `INVALID_ARGUMENT` whose details name each field and rule, with
the first field and rule also in trailing metadata `driftloop-field` and
`driftloop-rule`). `IngestStream` gathers events into batches as they arrive
and publishes each batch while the next one is read, so a stream costs one
round of broker acknowledgements per batch, not per event; valid events flow
even when others in the same stream are rejected.

Who may call is not decided here: the core server checks every call against
its table of roles (`driftloop_core.grpc.auth`), where both methods need the
`ingest` role (`DRIFTLOOP_INGEST_TOKEN`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Collection
from typing import Any

import grpc
import grpc.aio
from driftloop.v1 import ingest_pb2, ingest_pb2_grpc

from driftloop_ingestion.handlers import Ingestor
from driftloop_ingestion.ports import LABEL, Accepted, Incoming, PublishFailed
from driftloop_ingestion.rules import Rejection

SERVICE_NAME = "driftloop.v1.IngestService"

_KINDS = {
    "observation": ingest_pb2.EVENT_KIND_OBSERVATION,
    LABEL: ingest_pb2.EVENT_KIND_LABEL,
}


def raw_event_fields(event: ingest_pb2.RawEvent, bool_fields: Collection[str]) -> dict[str, Any]:
    """A `RawEvent` as the JSON object it stands for.

    `FeatureValue` has no boolean, so a bool field arrives as `int_value` 0/1
    and is turned back into one; an unset value stands for JSON null.
    """
    fields: dict[str, Any] = {}
    for name, value in event.fields.items():
        kind = value.WhichOneof("kind")
        if kind is None:
            fields[name] = None
        elif kind == "int_value" and name in bool_fields and value.int_value in (0, 1):
            fields[name] = bool(value.int_value)
        else:
            fields[name] = getattr(value, kind)
    return fields


def _incoming(
    request: ingest_pb2.IngestRequest | ingest_pb2.IngestStreamRequest,
    bool_fields: Collection[str],
) -> Incoming:
    which = request.WhichOneof("event")
    if which == "raw":
        return Incoming(raw_event_fields(request.raw, bool_fields))
    # An empty request is judged as an empty JSON text: rejected with rule "json".
    return Incoming(request.json)


class IngestServicer(ingest_pb2_grpc.IngestServiceServicer):
    def __init__(
        self,
        ingestor: Ingestor,
        *,
        batch_size: int,
        flush_interval_s: float,
        max_listed_rejections: int = 10_000,
    ) -> None:
        self._ingestor = ingestor
        self._batch_size = batch_size
        self._flush_interval_s = flush_interval_s
        self._max_listed = max_listed_rejections
        featureset = ingestor.validator.featureset
        self._bool_fields = frozenset(
            name for name, spec in featureset.fields.items() if spec.type == "bool"
        )

    async def Ingest(
        self, request: ingest_pb2.IngestRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ingest_pb2.IngestResponse:
        try:
            [outcome] = await self._ingestor.ingest(
                [_incoming(request, self._bool_fields)], source="grpc"
            )
        except PublishFailed as error:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(error))
        if isinstance(outcome, Rejection):
            context.set_trailing_metadata(
                (("driftloop-field", outcome.field), ("driftloop-rule", outcome.rule))
            )
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, outcome.describe())
        return ingest_pb2.IngestResponse(
            event_id=outcome.event_id,
            kind=_KINDS[outcome.kind],
            duplicate=outcome.duplicate,
            held=outcome.held,
        )

    async def IngestStream(
        self,
        request_iterator: AsyncIterator[ingest_pb2.IngestStreamRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> ingest_pb2.IngestStreamResponse:
        batcher = _StreamBatcher(self._ingestor, self._max_listed)
        ticker = asyncio.create_task(self._tick(batcher))
        try:
            async for request in request_iterator:
                if batcher.add(_incoming(request, self._bool_fields)) >= self._batch_size:
                    await batcher.submit()
            await batcher.submit()
            await batcher.drain()
        except PublishFailed as error:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(error))
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError, PublishFailed):
                await ticker
            await batcher.close()
        return batcher.response

    async def _tick(self, batcher: _StreamBatcher) -> None:
        """Publish events a slow stream left waiting longer than the flush interval."""
        while True:
            await asyncio.sleep(self._flush_interval_s / 2)
            if batcher.oldest_age() >= self._flush_interval_s:
                await batcher.submit()


class _StreamBatcher:
    """The events of one stream, ingested batch after batch in stream order."""

    def __init__(self, ingestor: Ingestor, max_listed: int) -> None:
        self._ingestor = ingestor
        self._max_listed = max_listed
        self._pending: list[Incoming] = []
        self._pending_since = 0.0
        self._next_index = 0
        self._last: asyncio.Task[None] | None = None
        self.response = ingest_pb2.IngestStreamResponse()

    def add(self, event: Incoming) -> int:
        """Queue one event; return how many are waiting."""
        if not self._pending:
            self._pending_since = time.monotonic()
        self._pending.append(event)
        return len(self._pending)

    def oldest_age(self) -> float:
        return time.monotonic() - self._pending_since if self._pending else 0.0

    async def submit(self) -> None:
        """Start ingesting what is waiting, after the batch before it.

        Returns once the previous batch is done, so the stream reads ahead by
        at most one batch while the broker acknowledges the one before.
        """
        if not self._pending:
            return
        batch, start = self._pending, self._next_index
        self._pending = []
        self._next_index += len(batch)
        previous = self._last
        self._last = asyncio.ensure_future(self._ingest_after(previous, batch, start))
        if previous is not None:
            await previous

    async def drain(self) -> None:
        if self._last is not None:
            await self._last

    async def close(self) -> None:
        """Stop a batch still running (the call failed or was cancelled)."""
        last, self._last = self._last, None
        if last is not None and not last.done():
            last.cancel()
        if last is not None:
            with contextlib.suppress(asyncio.CancelledError, PublishFailed):
                await last

    async def _ingest_after(
        self, previous: asyncio.Task[None] | None, batch: list[Incoming], start: int
    ) -> None:
        if previous is not None:
            await previous
        outcomes = await self._ingestor.ingest(batch, source="grpc")
        response = self.response
        for offset, outcome in enumerate(outcomes):
            if isinstance(outcome, Accepted):
                response.accepted += 1
                if outcome.duplicate:
                    response.duplicates += 1
                if outcome.held:
                    response.held += 1
                continue
            response.rejected += 1
            if len(response.rejections) < self._max_listed:
                response.rejections.append(
                    ingest_pb2.Rejection(
                        index=start + offset,
                        event_id=outcome.event_id,
                        field=outcome.field,
                        rule=outcome.rule,
                        reason=outcome.reason,
                    )
                )
