"""What Driftloop's test suites share: polling, Kafka and gRPC probes, event builders.

Written once here and imported by every suite, like production helpers are.
"""

from driftloop_testing.events import model_trained
from driftloop_testing.grpc import health, token_channel
from driftloop_testing.kafka import collect, produce_json, read_topic
from driftloop_testing.polling import eventually, wait_until

__all__ = [
    "collect",
    "eventually",
    "health",
    "model_trained",
    "produce_json",
    "read_topic",
    "token_channel",
    "wait_until",
]
