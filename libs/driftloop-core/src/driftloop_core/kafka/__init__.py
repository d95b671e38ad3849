"""Kafka plumbing shared by every service: headers, topics, publish, consume."""

from driftloop_core.kafka.consumer import group_consumer, reader, tail
from driftloop_core.kafka.headers import EventHeaders, make_headers, parse_headers
from driftloop_core.kafka.loop import ConsumerLoop, LoopStats
from driftloop_core.kafka.policies import (
    CommitAfterBatch,
    FlushThenCommit,
    FromLatest,
    StoredOffsets,
)
from driftloop_core.kafka.publisher import Outgoing, Publisher
from driftloop_core.kafka.record import PoisonMessage, Record, TransientError
from driftloop_core.kafka.retry import Stopped, is_transient
from driftloop_core.kafka.topics import Topics, TopicSpec, default_topic_specs, ensure_topics

__all__ = [
    "CommitAfterBatch",
    "ConsumerLoop",
    "EventHeaders",
    "FlushThenCommit",
    "FromLatest",
    "LoopStats",
    "Outgoing",
    "PoisonMessage",
    "Publisher",
    "Record",
    "Stopped",
    "StoredOffsets",
    "TopicSpec",
    "Topics",
    "TransientError",
    "default_topic_specs",
    "ensure_topics",
    "group_consumer",
    "is_transient",
    "make_headers",
    "parse_headers",
    "reader",
    "tail",
]
