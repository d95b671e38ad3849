"""Valid events onto `events.valid`, a whole batch per round of acknowledgements,
and the dead letters of held labels (their observations never came, or
disagreed with them).

The handler hands over protobuf messages; this adapter turns them into records
with CloudEvents headers (and `label_correction: 1` on a label correction)
through the shared `Publisher.publish_batch`, which pipelines the batch and
waits until the broker acknowledged every record.
"""

from __future__ import annotations

from collections.abc import Sequence

from aiokafka.errors import KafkaError
from driftloop_core.kafka.publisher import Outgoing, Publisher
from driftloop_core.kafka.topics import kind_of_message

from driftloop_ingestion.ports import (
    CORRECTION_HEADER,
    LABEL,
    OBSERVATION,
    Kind,
    Publication,
    PublishFailed,
)

_DEADLETTER_TYPE = kind_of_message("driftloop.v1.DeadLetter").ce_type
_CORRECTION = {CORRECTION_HEADER: "1"}
_KINDS = {
    OBSERVATION: kind_of_message("driftloop.v1.Observation"),
    LABEL: kind_of_message("driftloop.v1.Label"),
}


class KafkaEventSink:
    def __init__(self, publisher: Publisher, deadletter_topic: str) -> None:
        self._publisher = publisher
        self._deadletter_topic = deadletter_topic
        # Topic and CloudEvents type by kind, as `Outgoing.event` would pick them.
        self._routes: dict[Kind, tuple[str, str]] = {
            kind: (event_kind.topic, event_kind.ce_type) for kind, event_kind in _KINDS.items()
        }

    async def publish(self, events: Sequence[Publication]) -> None:
        routes = self._routes
        records = []
        for event in events:
            topic, ce_type = routes[event.kind]
            extra = _CORRECTION if event.correction else None
            records.append(
                Outgoing(
                    topic, event.value, event.key, ce_type, event.event_id, extra_headers=extra
                )
            )
        try:
            await self._publisher.publish_batch(records, trace_batch=True)
        except (KafkaError, ConnectionError, TimeoutError) as error:
            raise PublishFailed(f"events.valid did not acknowledge the batch: {error!r}") from error

    async def deadletter(self, letters: Sequence[bytes]) -> None:
        topic = self._deadletter_topic
        records = [Outgoing(topic, letter, None, _DEADLETTER_TYPE) for letter in letters]
        try:
            await self._publisher.publish_batch(records, trace_batch=True)
        except (KafkaError, ConnectionError, TimeoutError) as error:
            raise PublishFailed(
                f"{topic} did not acknowledge the dead letters: {error!r}"
            ) from error
