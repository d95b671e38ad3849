"""Kafka plumbing shared by every service: headers, topics, publish, consume."""

from driftloop_core.kafka.consumer import Consumer, PoisonMessage, Record, TransientError
from driftloop_core.kafka.headers import EventHeaders, make_headers, parse_headers
from driftloop_core.kafka.publisher import Outgoing, Publisher
from driftloop_core.kafka.topics import Topics, TopicSpec, default_topic_specs, ensure_topics

__all__ = [
    "Consumer",
    "EventHeaders",
    "Outgoing",
    "PoisonMessage",
    "Publisher",
    "Record",
    "TopicSpec",
    "Topics",
    "TransientError",
    "default_topic_specs",
    "ensure_topics",
    "make_headers",
    "parse_headers",
]
