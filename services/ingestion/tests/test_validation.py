"""The validator accepts the documented events and names field and rule for every bad one."""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

import orjson
import pytest
from driftloop_core.featureset import (
    FeatureSet,
    default_featureset_path,
    load_featureset,
    parse_featureset,
)
from driftloop_ingestion.validation import (
    Rejection,
    Validator,
    ValidLabel,
    ValidObservation,
    origin_event_id,
)

NOW_MS = 1_763_800_000_000  # 2025-11-22T08:26:40Z
CLOCK = lambda: NOW_MS / 1000  # noqa: E731 - a fixed clock


@pytest.fixture(scope="module")
def validator() -> Validator:
    return Validator(load_featureset(default_featureset_path()), clock=CLOCK)


def good(**changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_id": "e1",
        "customer_id": "c7",
        "ts": NOW_MS,
        "amount": 12.5,
        "channel": "web",
        "hour": 3,
    }
    for key, value in changes.items():
        if value is ...:
            event.pop(key)
        else:
            event[key] = value
    return event


def rejected(validator: Validator, event: dict[str, Any] | bytes) -> Rejection:
    payload = event if isinstance(event, bytes) else orjson.dumps(event)
    outcome = validator.validate_json(payload)
    assert isinstance(outcome, Rejection), outcome
    return outcome


def test_documented_observation_is_accepted_with_typed_values(validator: Validator) -> None:
    outcome = validator.validate_json(
        b'{"event_id": "e1", "customer_id": "c7", "ts": 1763800000000, '
        b'"amount": 12.5, "channel": "web", "hour": 3}'
    )
    assert outcome == ValidObservation(
        "e1", "c7", NOW_MS, {"amount": 12.5, "channel": "web", "hour": 3}, None
    )


def test_lenient_where_the_meaning_is_unambiguous(validator: Validator) -> None:
    outcome = validator.validate(
        good(customer_id=42, amount=12, hour=3.0, ts="2025-11-22T09:26:40.5+01:00", is_fraud=1)
    )
    assert isinstance(outcome, ValidObservation)
    assert outcome.entity_id == "42"
    assert outcome.values == {"amount": 12.0, "channel": "web", "hour": 3}
    assert type(outcome.values["amount"]) is float and type(outcome.values["hour"]) is int
    assert outcome.event_time_ms == NOW_MS + 500
    assert outcome.label == 1


def test_documented_late_label_is_accepted(validator: Validator) -> None:
    assert validator.validate_json(b'{"event_id": "e1", "is_fraud": 1}') == ValidLabel("e1", 1)
    assert validator.validate(
        {"event_id": "e1", "is_fraud": 0, "ts": "2025-11-22T08:00:00Z"}
    ) == ValidLabel("e1", 0)


@pytest.mark.parametrize(
    ("event", "field", "rule", "reason"),
    [
        (b'{"event_id": "e1", ', "", "json", "event is not valid JSON"),
        (b"", "", "json", "event is not valid JSON"),
        (b"[1, 2]", "", "json", "event must be a JSON object, got an array"),
        (b"NaN", "", "json", "event is not valid JSON"),
        (good(customer_id=...), "customer_id", "required", "customer_id: is required"),
        (good(customer_id=""), "customer_id", "required", "customer_id: must not be empty"),
        (good(customer_id=[1]), "customer_id", "type", "customer_id: must be a string or an"),
        (good(amount=...), "amount", "required", "amount: is required but missing"),
        (good(amount=None), "amount", "required", "amount: is required but got null"),
        (good(ts=...), "ts", "required", "ts: is required but missing"),
        (good(colour="red"), "colour", "unknown_field", "colour: is not a field of feature set"),
        (good(amount="12.5"), "amount", "type", "amount: must be a number, got '12.5'"),
        (good(amount=True), "amount", "type", "amount: must be a number, got true"),
        (good(hour=3.5), "hour", "type", "hour: must be an integer, got 3.5"),
        (good(hour="3"), "hour", "type", "hour: must be an integer, got '3'"),
        (good(channel=3), "channel", "type", "channel: must be a string"),
        (good(amount=-3), "amount", "min", "amount: must be >= 0, got -3"),
        (good(hour=24), "hour", "max", "hour: must be <= 23, got 24"),
        (good(hour=-1), "hour", "min", "hour: must be >= 0, got -1"),
        (good(channel="bike"), "channel", "category", "channel: must be one of web, pos, atm"),
        (good(ts="yesterday"), "ts", "timestamp", "ts: must be RFC 3339"),
        (good(ts="2025-11-22T08:26:40"), "ts", "timestamp", "ts: must be RFC 3339 with a UTC"),
        (good(ts="2025-13-22T08:26:40Z"), "ts", "timestamp", "ts: must be RFC 3339"),
        (good(ts=1_763_800_000), "ts", "timestamp", "(epoch seconds? it must be milliseconds)"),
        (
            good(ts=NOW_MS + 2 * 86_400_000),
            "ts",
            "future",
            "ts: must not lie more than 5m after the current time 2025-11-22T08:26:40Z",
        ),
        (good(ts=2**62), "ts", "future", f"got {2**62}"),
        (good(ts="1999-12-31T23:59:59Z"), "ts", "timestamp", "ts: must not lie before 2000"),
        (good(event_id="x" * 257), "event_id", "length", "event_id: must be at most 256 bytes"),
        (good(customer_id="\u00e9" * 129), "customer_id", "length", "got 258 bytes starting"),
        ({"event_id": "y" * 300, "is_fraud": 1}, "event_id", "length", "got 300 bytes"),
        (good(correction=True), "correction", "unknown_field", "correction: only a late label"),
        (
            {"event_id": "e1", "is_fraud": 1, "correction": "yes"},
            "correction",
            "type",
            "correction: must be true or false, got 'yes'",
        ),
        (good(ts=1.7638e12 + 0.5), "ts", "timestamp", "ts: must be an RFC 3339 string or"),
        (good(ts=True), "ts", "timestamp", "ts: must be an RFC 3339 string or integer"),
        (good(is_fraud=2), "is_fraud", "label", "is_fraud: must be 0 or 1, got 2"),
        (good(is_fraud="1"), "is_fraud", "label", "is_fraud: must be 0 or 1, got '1'"),
        (good(is_fraud=True), "is_fraud", "label", "is_fraud: must be 0 or 1, got true"),
        (good(event_id=""), "event_id", "required", "event_id: must not be empty"),
        (good(event_id=1.5), "event_id", "type", "event_id: must be a string or an integer"),
        ({"event_id": "e1", "is_fraud": 3}, "is_fraud", "label", "is_fraud: must be 0 or 1"),
        ({"is_fraud": 1}, "event_id", "required", "event_id: is required on a late label"),
        (
            {"event_id": "e1", "is_fraud": 1, "note": "x"},
            "note",
            "unknown_field",
            "note: a late label takes only event_id, is_fraud, ts and correction",
        ),
    ],
)
def test_each_malformed_kind_names_its_field_and_rule(
    validator: Validator, event: dict[str, Any] | bytes, field: str, rule: str, reason: str
) -> None:
    outcome = rejected(validator, event)
    assert (outcome.field, outcome.rule) == (field, rule)
    assert reason in outcome.reason
    if field:
        assert outcome.reason.startswith(f"{field}: ")
    assert f"(rule: {rule})" in outcome.describe()


def test_every_problem_is_reported_in_a_fixed_order(validator: Validator) -> None:
    outcome = rejected(
        validator,
        {
            "zeta": 1,
            "alpha": 2,
            "hour": 99,
            "amount": -1,
            "customer_id": "c1",
            "ts": "nope",
            "channel": "bike",
        },
    )
    assert [(p.field, p.rule) for p in outcome.problems] == [
        ("ts", "timestamp"),
        ("amount", "min"),
        ("channel", "category"),
        ("hour", "max"),
        ("alpha", "unknown_field"),
        ("zeta", "unknown_field"),
    ]
    assert outcome.reason.split("; ")[1] == "amount: must be >= 0, got -1"
    assert outcome.event_id == ""


def test_rejection_keeps_the_given_event_id(validator: Validator) -> None:
    assert rejected(validator, good(event_id="e9", amount=-1)).event_id == "e9"


def test_event_times_may_run_ahead_of_the_clock_by_the_grace_or_the_allowance() -> None:
    featureset = load_featureset(default_featureset_path())
    assert featureset.grace == timedelta(minutes=5)
    default = Validator(featureset, clock=CLOCK)
    assert isinstance(default.validate(good(ts=NOW_MS + 5 * 60_000)), ValidObservation)
    ahead = rejected(default, good(ts=NOW_MS + 5 * 60_000 + 1))
    assert (ahead.field, ahead.rule) == ("ts", "future")
    assert "DRIFTLOOP_INGESTION_MAX_FUTURE" in ahead.reason
    # A late label's timestamp is bounded alike.
    label = rejected(default, {"event_id": "e1", "is_fraud": 1, "ts": NOW_MS + 3_600_000})
    assert (label.field, label.rule) == ("ts", "future")

    lenient = Validator(featureset, clock=CLOCK, max_future=timedelta(hours=1))
    assert isinstance(lenient.validate(good(ts=NOW_MS + 3_600_000)), ValidObservation)
    assert "more than 1h after" in rejected(lenient, good(ts=NOW_MS + 3_600_001)).reason


def test_ids_are_capped_at_256_bytes_of_utf8(validator: Validator) -> None:
    for longest in ("x" * 256, "\u00e9" * 128, "\U0001f600" * 64):
        assert len(longest.encode()) == 256
        outcome = validator.validate(good(event_id=longest, customer_id=longest))
        assert isinstance(outcome, ValidObservation), outcome
    huge = "c" * 3 * 1024 * 1024
    refused = validator.validate(good(customer_id=huge, event_id=huge))
    assert isinstance(refused, Rejection)
    assert [(p.field, p.rule) for p in refused.problems] == [
        ("event_id", "length"),
        ("customer_id", "length"),
    ]
    # Neither the rejection nor its reason carries the huge id along.
    assert refused.event_id == "" and len(refused.reason) < 400


def test_a_correction_is_a_late_label_that_says_so(validator: Validator) -> None:
    corrected = {"event_id": "e1", "is_fraud": 0, "correction": True}
    assert validator.validate(corrected) == ValidLabel("e1", 0, correction=True)
    plain = {"event_id": "e1", "is_fraud": 0, "correction": False}
    assert validator.validate(plain) == ValidLabel("e1", 0)


def test_non_finite_numbers_from_typed_input_are_rejected(validator: Validator) -> None:
    for value in (float("nan"), float("inf"), float("-inf")):
        outcome = validator.validate(good(amount=value))
        assert isinstance(outcome, Rejection)
        assert (outcome.field, outcome.rule) == ("amount", "type")
        assert "finite" in outcome.reason


def test_missing_event_id_is_derived_from_the_origin_or_random(validator: Validator) -> None:
    origin = ("events.raw", 2, 41, NOW_MS)
    first = validator.validate(good(event_id=...), origin=origin)
    again = validator.validate(good(event_id=...), origin=origin)
    elsewhere = validator.validate(good(event_id=...), origin=("events.raw", 2, 42, NOW_MS))
    assert isinstance(first, ValidObservation) and isinstance(again, ValidObservation)
    assert isinstance(elsewhere, ValidObservation)
    assert first.event_id == again.event_id == origin_event_id(origin)
    assert len(first.event_id) == 32 and elsewhere.event_id != first.event_id
    random_ids = {
        outcome.event_id
        for outcome in (validator.validate(good(event_id=...)) for _ in range(3))
        if isinstance(outcome, ValidObservation)
    }
    assert len(random_ids) == 3


def test_optional_bool_and_string_fields(tmp_path: Any) -> None:
    featureset: FeatureSet = parse_featureset(
        {
            "name": "shop",
            "entity": "user",
            "timestamp": "at",
            "label": "churned",
            "fields": {
                "vip": {"type": "bool"},
                "note": {"type": "string", "required": False},
                "score": {"type": "float", "required": False, "max": 1},
            },
            "model": {"features": ["vip"]},
        }
    )
    validator = Validator(featureset, clock=CLOCK)
    ok = validator.validate({"user": "u1", "at": NOW_MS, "vip": False, "note": None})
    assert isinstance(ok, ValidObservation) and ok.values == {"vip": False}
    bad = validator.validate({"user": "u1", "at": NOW_MS, "vip": 1, "note": 2, "score": 2})
    assert isinstance(bad, Rejection)
    assert [(p.field, p.rule) for p in bad.problems] == [
        ("vip", "type"),
        ("note", "type"),
        ("score", "max"),
    ]


def test_long_reasons_are_capped(validator: Validator) -> None:
    outcome = rejected(validator, good(**{f"extra{i:02}": i for i in range(30)}))
    assert len(outcome.problems) == 30
    assert outcome.reason.endswith("and 20 more problems")


def _random_json(rng: random.Random, depth: int = 0) -> Any:
    choice = rng.randrange(9 if depth < 2 else 7)
    if choice == 0:
        return None
    if choice == 1:
        return rng.choice([True, False])
    if choice == 2:
        return rng.randint(-(2**70), 2**70)
    if choice == 3:
        return rng.choice([rng.uniform(-1e6, 1e6), 0.0, -0.0, 1e308])
    if choice == 4:
        return rng.choice(["", "web", "2025-11-22T08:26:40Z", "x" * 100, "\u00e9"])
    if choice == 5:
        return rng.choice([NOW_MS, 0, -1, 2**63])
    if choice == 6:
        return rng.choice(["e1", 7, "c7"])
    if choice == 7:
        return [_random_json(rng, depth + 1) for _ in range(rng.randrange(3))]
    keys = ["event_id", "customer_id", "ts", "amount", "channel", "hour", "is_fraud", "x"]
    keys.append("correction")
    return {rng.choice(keys): _random_json(rng, depth + 1) for _ in range(rng.randrange(8))}


def test_any_json_gets_an_answer_never_an_exception(validator: Validator) -> None:
    rng = random.Random(3)
    kinds = set()
    for _ in range(3000):
        outcome = validator.validate_json(_dump(rng))
        kinds.add(type(outcome).__name__)
        if isinstance(outcome, Rejection):
            assert outcome.problems and all(p.rule for p in outcome.problems)
    assert {"Rejection"} <= kinds


def _dump(rng: random.Random) -> bytes:
    value = _random_json(rng)
    try:
        return orjson.dumps(value)
    except TypeError:  # an integer beyond 64 bits: send it as text, as a producer could
        return str(value).encode()
