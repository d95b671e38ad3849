"""What the registry accepts, checked before anything is looked up or read.

A `ModelTrained` on `models.trained` comes from anyone who may write to the
topic, so it is checked like a request: ids present and bounded, digests that
are digests (a sha256 becomes a location in the artifact store), sizes and
counts not negative, metrics finite (the gate compares them). Each refusal is
an `InvalidRequestError` naming the field and the rule, in the vocabulary of
`DeadLetter.rule`:

    required   a field that must be set is empty
    length     text longer than allowed, in UTF-8 bytes
    format     a digest that is not 64 lowercase hex characters
    min        a number below its lower bound
    finite     a metric that is NaN or infinite

gRPC requests name models the same way: at most `MAX_NAME_BYTES`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from driftloop.v1 import events_pb2
from driftloop_core.artifacts import is_sha256
from driftloop_core.ids import MAX_ID_BYTES

from driftloop_registry.domain import InvalidRequestError

# A model name or alias in any request.
MAX_NAME_BYTES = MAX_ID_BYTES
# Text of a ModelTrained the registry keeps, at most the width of its column
# (characters there; a UTF-8 byte bound below it always fits).
_TRAINED_TEXT: Mapping[str, int] = {
    "model": 200,
    "request_id": 200,
    "code_version": 200,
    "algorithm": 100,
    "artifact.media_type": 100,
    "artifact.uri": 2048,
    "dataset.uri": 2048,
    "parent_drift_id": MAX_ID_BYTES,
}
# A feature name, a metric's or a parameter's name.
MAX_KEY_BYTES = 256


def _bounded(field: str, value: str, limit: int) -> None:
    size = len(value.encode())
    if size > limit:
        raise InvalidRequestError(
            f"{field}: at most {limit} bytes, got {size}", field=field, rule="length"
        )


def check_name(field: str, value: str, *, required: bool = True) -> None:
    """A model name (or alias) in a request: set when `required`, at most
    `MAX_NAME_BYTES`."""
    if required and not value:
        raise InvalidRequestError(f"{field}: must not be empty", field=field, rule="required")
    _bounded(field, value, MAX_NAME_BYTES)


def _field_value(trained: events_pb2.ModelTrained, path: str) -> str:
    value: object = trained
    for part in path.split("."):
        value = getattr(value, part)
    assert isinstance(value, str)
    return value


def check_trained(trained: events_pb2.ModelTrained) -> None:
    """Raise `InvalidRequestError` (with field and rule) unless `trained` may be
    registered as far as its own fields tell; the artifact is checked after."""
    for name in ("model", "request_id", "artifact.sha256"):
        if not _field_value(trained, name):
            raise InvalidRequestError(
                f"ModelTrained.{name}: must not be empty", field=name, rule="required"
            )
    for name, limit in _TRAINED_TEXT.items():
        _bounded(name, _field_value(trained, name), limit)
    for name in ("artifact.sha256", "dataset.sha256"):
        value = _field_value(trained, name)
        if value and not is_sha256(value):
            shown = value if len(value) <= 80 else value[:80] + "..."
            raise InvalidRequestError(
                f"{name}: must be 64 lowercase hex characters (a sha256), got "
                f"{len(value)} characters: {shown!r}",
                field=name,
                rule="format",
            )
    counts = {
        "artifact.size_bytes": trained.artifact.size_bytes,
        "eval_rows": trained.eval_rows,
        "dataset.row_count": trained.dataset.row_count,
    }
    for name, count in counts.items():
        if count < 0:
            raise InvalidRequestError(
                f"{name}: must not be negative, got {count}", field=name, rule="min"
            )
    if trained.HasField("champion_version") and trained.champion_version < 1:
        raise InvalidRequestError(
            f"champion_version: versions start at 1, got {trained.champion_version}",
            field="champion_version",
            rule="min",
        )
    for group in ("metrics", "champion_metrics"):
        values: Mapping[str, float] = getattr(trained, group)
        for key, figure in values.items():
            _bounded(f"{group}.{key[:40]}", key, MAX_KEY_BYTES)
            if not math.isfinite(figure):
                raise InvalidRequestError(
                    f"{group}.{key}: must be a finite number, got {figure}",
                    field=f"{group}.{key}",
                    rule="finite",
                )
    for index, feature in enumerate(trained.feature_names):
        _bounded(f"feature_names[{index}]", feature, MAX_KEY_BYTES)
