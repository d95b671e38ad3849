"""What the trainer accepts on `training.requested`, checked before anything runs.

Anyone who may write to the topic can send a `TrainingRequested`, so it is
checked like a request. What can never succeed is dead-lettered naming the
field and the rule (the vocabulary of `DeadLetter.rule`):

    required   `request_id` or `model` is empty
    length     text longer than allowed, in UTF-8 bytes: `request_id` 200 (it
               becomes `ModelTrained.request_id`, which the registry bounds
               so), `model`, `parent_drift_id`, `requested_by` 256, `reason` 4096
    enum       a `trigger` that is not a `TrainingTrigger` value
    timestamp  a time (`requested_at`, the window's range) outside what a
               protobuf Timestamp can hold (years 1 to 9999)

What the window selects (`last_n` below 1, a range that ends before it
starts) is the feature store's to judge: the run fails at `load_data` with its
answer, which `driftloop train` shows.
"""

from __future__ import annotations

from collections.abc import Mapping

from driftloop.v1 import events_pb2
from google.protobuf import timestamp_pb2

_TEXT_LIMITS: Mapping[str, int] = {
    "request_id": 200,
    "model": 256,
    "parent_drift_id": 256,
    "requested_by": 256,
    "reason": 4096,
}
# google.protobuf.Timestamp's range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
_MIN_SECONDS = -62_135_596_800
_MAX_SECONDS = 253_402_300_799
_TRIGGERS = frozenset(events_pb2.TrainingTrigger.values())


class InvalidRequest(ValueError):
    """A `TrainingRequested` that can never be run; `field` and `rule` say why."""

    def __init__(self, message: str, *, field: str, rule: str) -> None:
        super().__init__(message)
        self.field = field
        self.rule = rule


def _timestamp(field: str, value: timestamp_pb2.Timestamp) -> None:
    if not (_MIN_SECONDS <= value.seconds <= _MAX_SECONDS and 0 <= value.nanos < 1_000_000_000):
        raise InvalidRequest(
            f"{field}: not a time between years 1 and 9999 "
            f"(seconds {value.seconds}, nanos {value.nanos})",
            field=field,
            rule="timestamp",
        )


def check_request(request: events_pb2.TrainingRequested) -> None:
    """Raise `InvalidRequest` unless `request` may be run."""
    for name in ("request_id", "model"):
        if not getattr(request, name):
            raise InvalidRequest(f"{name}: must not be empty", field=name, rule="required")
    for name, limit in _TEXT_LIMITS.items():
        size = len(str(getattr(request, name)).encode())
        if size > limit:
            raise InvalidRequest(
                f"{name}: at most {limit} bytes, got {size}", field=name, rule="length"
            )
    if request.trigger not in _TRIGGERS:
        raise InvalidRequest(
            f"trigger: {request.trigger} is not a TrainingTrigger", field="trigger", rule="enum"
        )
    if request.HasField("requested_at"):
        _timestamp("requested_at", request.requested_at)
    span = request.window.time_range
    for name in ("start", "end"):
        if span.HasField(name):
            _timestamp(f"window.time_range.{name}", getattr(span, name))
