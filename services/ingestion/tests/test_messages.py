"""The hand-written Observation encoder writes what the protobuf API would."""

from __future__ import annotations

import random

from driftloop.v1 import events_pb2
from driftloop_core.featureset import parse_featureset
from driftloop_ingestion.messages import ObservationEncoder, observation_message
from driftloop_ingestion.validation import FieldValue, ValidObservation

FEATURESET = parse_featureset(
    {
        "name": "everything",
        "entity": "user",
        "timestamp": "at",
        "label": "y",
        "fields": {
            "f": {"type": "float"},
            "i": {"type": "int"},
            "c": {"type": "category", "values": ["a", "b"]},
            "b": {"type": "bool"},
            "s": {"type": "string"},
            "a_rather_long_field_name_to_push_entry_sizes_past_one_varint_byte": {"type": "string"},
        },
        "model": {"features": ["f"]},
    }
)


def random_observation(rng: random.Random) -> ValidObservation:
    values: dict[str, FieldValue] = {}
    if rng.random() < 0.9:
        values["f"] = rng.choice([0.0, -0.0, 1.5, -1e300, 5e-324, rng.uniform(-1e9, 1e9)])
    if rng.random() < 0.9:
        values["i"] = rng.choice(
            [0, 1, 127, 128, -1, 2**63 - 1, -(2**63), rng.randint(-(10**12), 10**12)]
        )
    if rng.random() < 0.9:
        values["c"] = rng.choice(["a", "b"])
    if rng.random() < 0.9:
        values["b"] = rng.random() < 0.5
    if rng.random() < 0.9:
        values["s"] = rng.choice(["", "x", "\u00e9\u4e2d", "y" * 200, "z" * 20000])
    if rng.random() < 0.5:
        values["a_rather_long_field_name_to_push_entry_sizes_past_one_varint_byte"] = "v" * 80
    return ValidObservation(
        event_id=rng.choice(["e1", "\u00e9v\u00e9nement", "x" * 300]),
        entity_id=rng.choice(["u", "42", "\U0001f600"]),
        event_time_ms=rng.choice(
            [946_684_800_000, 946_684_800_001, rng.randint(10**12, 2 * 10**12)]
        ),
        values=values,
        label=rng.choice([None, 0, 1]),
    )


def test_encoded_observations_parse_to_the_api_built_message() -> None:
    rng = random.Random(5)
    encoder = ObservationEncoder(FEATURESET)
    for _ in range(2000):
        event = random_observation(rng)
        ingested_at = rng.choice(
            [946_684_800_000, 1_763_800_000_123, rng.randint(10**12, 2 * 10**12)]
        )
        encoded = encoder.encode(event, ingested_at_ms=ingested_at)
        expected = observation_message(event, feature_set="everything", ingested_at_ms=ingested_at)
        parsed = events_pb2.Observation.FromString(encoded)
        assert parsed == expected
        assert parsed.HasField("label") == (event.label is not None)
        assert len(encoded) == expected.ByteSize()


def test_bool_travels_as_int_value() -> None:
    event = ValidObservation("e1", "u1", 1_763_800_000_000, {"b": True, "i": 0}, None)
    parsed = events_pb2.Observation.FromString(
        ObservationEncoder(FEATURESET).encode(event, ingested_at_ms=1_763_800_000_000)
    )
    assert (
        parsed.values["b"].WhichOneof("kind") == "int_value" and parsed.values["b"].int_value == 1
    )
    assert (
        parsed.values["i"].WhichOneof("kind") == "int_value" and parsed.values["i"].int_value == 0
    )


def test_the_content_digest_names_the_event_not_when_it_was_ingested() -> None:
    encoder = ObservationEncoder(FEATURESET)
    event = ValidObservation("e1", "u", 946_684_800_000, {"f": 1.0, "s": "x"}, 1)
    encoded, digest = encoder.encode_with_digest(event, ingested_at_ms=10**12)
    assert encoded == encoder.encode(event, ingested_at_ms=10**12)
    assert encoder.encode_with_digest(event, ingested_at_ms=2 * 10**12)[1] == digest
    others = [
        event._replace(entity_id="v"),
        event._replace(event_time_ms=946_684_800_001),
        event._replace(values={"f": 2.0, "s": "x"}),
        event._replace(values={"f": 1.0}),
        event._replace(label=0),
        event._replace(label=None),
    ]
    digests = {encoder.encode_with_digest(other, ingested_at_ms=10**12)[1] for other in others}
    assert len(digests) == len(others) and digest not in digests
