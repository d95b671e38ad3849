"""`models.promoted` in: every replica loads every promotion (and rollback) of its model.

A group of one (its id unique to this process) starting from the latest
offsets and committing nothing (`FromLatest`): what happened before the process
started is covered by the registry's GetChampion at start, which runs only once
the listener holds its partitions and knows its positions, so no promotion
falls in between. A record that does not decode is dead-lettered with its
source position (by every replica, each naming itself) and the listener moves on.

The same holds after a rejoin (the embedded broker restarted empty and forgot
the group, or the coordinator dropped this member): it starts again from the
latest offsets, past any promotion published meanwhile, so every assignment
after the first calls `on_reassigned` once the new positions are known, and
records fetched under the previous assignment are dropped, since that call
covers them.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import structlog
from driftloop.v1 import events_pb2
from driftloop_core.kafka import ConsumerLoop, FromLatest, PoisonMessage, Publisher, Record
from driftloop_core.settings import Settings
from google.protobuf.message import DecodeError
from opentelemetry import trace

log = structlog.get_logger(__name__)
_tracer = trace.get_tracer("driftloop.inference")

OnPromoted = Callable[[events_pb2.ModelPromoted], Awaitable[None]]
# Called after a rejoin, once the new positions are known: catch up on the
# promotions published before them.
OnReassigned = Callable[[], Awaitable[None]]


class PromotionHandler:
    """Decode a `ModelPromoted`; swap when it names this replica's model."""

    def __init__(self, model: str, on_promoted: OnPromoted) -> None:
        self._model = model
        self._on_promoted = on_promoted

    async def __call__(self, record: Record) -> None:
        try:
            promoted = events_pb2.ModelPromoted.FromString(record.value)
        except DecodeError as error:
            raise PoisonMessage(f"value is not a ModelPromoted: {error}", rule="decode") from None
        if promoted.model != self._model:
            return
        log.info(
            "model_promoted_received",
            model=promoted.model,
            to_version=promoted.to_version,
            kind=events_pb2.PromotionKind.Name(promoted.kind),
        )
        # The promotion's trace goes on here (the consume span is the child of
        # the registry's send): download, load, warm-up and swap are children of
        # this span, and the first request the new version answers ends it.
        with _tracer.start_as_current_span(
            "inference.model_swap",
            attributes={
                "driftloop.model": promoted.model,
                "driftloop.model_version": promoted.to_version,
            },
        ):
            await self._on_promoted(promoted)


def promotion_listener(
    settings: Settings,
    topic: str,
    model: str,
    group_prefix: str,
    on_promoted: OnPromoted,
    publisher: Publisher,
    *,
    deadletter_topic: str,
    on_reassigned: OnReassigned | None = None,
) -> ConsumerLoop:
    """The listener of one inference process: its own group, from the latest offsets."""
    return ConsumerLoop(
        settings,
        topics=[topic],
        group_id=f"{group_prefix}-{uuid.uuid4().hex[:12]}",
        publisher=publisher,
        handle=PromotionHandler(model, on_promoted),
        policy=FromLatest(on_reassigned=on_reassigned),
        deadletter_topic=deadletter_topic,
        client_suffix="promotions",
    )
