"""Property-based tests: the raw-JSON validator and the feature-set loader meet
arbitrary input (random nesting, types, sizes) and always answer, never crash:
a valid result, or an error that names the field or key and the rule."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from driftloop_core.featureset import FeatureSetError, default_featureset_path, load_featureset
from driftloop_ingestion.validation import Rejection, Validator, ValidLabel, ValidObservation
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FEATURESET = load_featureset(default_featureset_path())
NOW_S = 1_763_800_000.0
KNOWN_FIELDS = ["event_id", "customer_id", "ts", "amount", "channel", "hour", "is_fraud"]

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
# Events that look like ours (known keys, arbitrary values) and events that don't.
events = st.dictionaries(
    st.sampled_from(KNOWN_FIELDS) | st.text(max_size=12), json_values, max_size=9
)


def validator() -> Validator:
    return Validator(FEATURESET, clock=lambda: NOW_S)


def assert_answered(result: object) -> None:
    if isinstance(result, Rejection):
        assert result.problems, "a rejection lists at least one problem"
        for problem in result.problems:
            assert problem.rule, "every problem names its rule"
            assert problem.reason
            if problem.field:
                assert problem.field in problem.reason, "the reason names the field"
    else:
        assert isinstance(result, ValidObservation | ValidLabel)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events)
def test_any_json_object_is_accepted_or_rejected_with_a_named_field_and_rule(
    event: dict[str, Any],
) -> None:
    assert_answered(validator().validate_json(json.dumps(event)))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_any_bytes_are_accepted_or_rejected(payload: bytes) -> None:
    assert_answered(validator().validate_json(payload))


@settings(max_examples=200, deadline=None)
@given(
    amount=st.floats(allow_nan=False, allow_infinity=False, min_value=0, max_value=1e12),
    channel=st.sampled_from(["web", "pos", "atm"]),
    hour=st.integers(min_value=0, max_value=23),
    ts=st.integers(min_value=1_600_000_000_000, max_value=int(NOW_S * 1000)),
)
def test_every_valid_observation_is_accepted_with_its_values(
    amount: float, channel: str, hour: int, ts: int
) -> None:
    event = {
        "event_id": "e1",
        "customer_id": "c1",
        "ts": ts,
        "amount": amount,
        "channel": channel,
        "hour": hour,
    }
    result = validator().validate_json(json.dumps(event))
    assert isinstance(result, ValidObservation), result
    assert result.values["channel"] == channel and result.values["hour"] == hour
    assert result.event_time_ms == ts


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(["amount", "hour"]), st.integers(min_value=-(10**6), max_value=-1))
def test_out_of_range_values_are_rejected_naming_the_field(field: str, value: int) -> None:
    event = {"event_id": "e1", "customer_id": "c1", "ts": 1_700_000_000_000, "amount": 1.0}
    event |= {"channel": "web", "hour": 1, field: value}
    result = validator().validate_json(json.dumps(event))
    assert isinstance(result, Rejection)
    assert result.field == field


BUILT_IN: dict[str, Any] = yaml.safe_load(default_featureset_path().read_text())


def mutations() -> st.SearchStrategy[dict[str, Any]]:
    """The built-in feature set with one key replaced, dropped or added at random."""
    paths = st.sampled_from(
        [
            ("name",),
            ("entity",),
            ("timestamp",),
            ("label",),
            ("fields",),
            ("fields", "amount"),
            ("fields", "amount", "type"),
            ("fields", "channel", "values"),
            ("fields", "hour", "max"),
            ("aggregations",),
            ("model",),
            ("model", "features"),
            ("model", "task"),
        ]
    )

    def mutate(path: tuple[str, ...], value: Any, drop: bool) -> dict[str, Any]:
        document = json.loads(json.dumps(BUILT_IN))
        node = document
        for key in path[:-1]:
            node = node[key]
        if drop:
            node.pop(path[-1], None)
        else:
            node[path[-1]] = value
        return document

    return st.builds(mutate, paths, json_values, st.booleans())


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(document=mutations() | st.dictionaries(st.text(max_size=10), json_values, max_size=6))
def test_any_feature_set_document_loads_or_names_each_problem(
    tmp_path: Path, document: dict[str, Any]
) -> None:
    path = tmp_path / "fs.yaml"
    path.write_text(yaml.safe_dump(document))
    try:
        loaded = load_featureset(path)
    except FeatureSetError as error:
        assert error.problems, "an error lists its problems"
        for key, rule in error.problems:
            assert key and rule
            assert f"{key}: {rule}" in str(error)
    else:
        assert loaded.name and loaded.entity


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "a: [\n", "\t", "name: x\n" * 3])
def test_broken_yaml_files_name_the_problem(tmp_path: Path, text: str) -> None:
    path = tmp_path / "fs.yaml"
    path.write_text(text)
    with pytest.raises(FeatureSetError) as raised:
        load_featureset(path)
    assert str(path) in str(raised.value)
