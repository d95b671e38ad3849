"""The feature-set loader accepts the documented file and names every problem."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from driftloop_core.featureset import (
    FeatureSetError,
    default_featureset_path,
    load_featureset,
)

GOOD = """
name: payments
entity: customer_id
timestamp: ts
label: is_fraud
fields:
  amount: {type: float, min: 0}
  channel: {type: category, values: [web, pos, atm]}
  hour: {type: int, min: 0, max: 23}
aggregations:
  - {name: amount_mean_1h, field: amount, fn: mean, window: 1h}
  - {name: txn_count_10m, field: amount, fn: count, window: 10m}
model:
  task: binary_classification
  features: [amount, channel, hour, amount_mean_1h, txn_count_10m]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fs.yaml"
    path.write_text(text)
    return path


def problems_of(tmp_path: Path, text: str) -> list[tuple[str, str]]:
    path = write(tmp_path, text)
    with pytest.raises(FeatureSetError) as caught:
        load_featureset(path)
    assert str(path) in str(caught.value)
    return caught.value.problems


def test_documented_file_loads(tmp_path: Path) -> None:
    fs = load_featureset(write(tmp_path, GOOD))
    assert fs.name == "payments"
    assert fs.entity == "customer_id"
    assert fs.fields["channel"].values == ("web", "pos", "atm")
    assert fs.aggregations[0].window == timedelta(hours=1)
    assert fs.aggregations[1].window == timedelta(minutes=10)
    assert fs.model.features[-1] == "txn_count_10m"
    assert fs.feature_type("txn_count_10m") == "int"
    assert fs.feature_type("amount_mean_1h") == "float"
    assert fs.feature_type("channel") == "category"


def test_builtin_featureset_is_valid() -> None:
    fs = load_featureset(default_featureset_path())
    assert fs.name == "payments"
    assert set(fs.model.features) <= set(fs.feature_names)


@pytest.mark.parametrize(
    ("broken", "key", "rule"),
    [
        (GOOD.replace("name: payments\n", ""), "name", "required key is missing"),
        (GOOD.replace("label: is_fraud", "label: is_fraud\ncolour: red"), "colour", "unknown key"),
        (GOOD.replace("type: float, min: 0", "type: decimal"), "fields.amount.type", "Input"),
        (GOOD.replace("min: 0, max: 23", "min: 5, max: 1"), "fields.hour", "must not exceed"),
        (GOOD.replace(", values: [web, pos, atm]", ""), "fields.channel", "non-empty 'values'"),
        (GOOD.replace("window: 1h", "window: soon"), "aggregations[0].window", "duration"),
        (
            GOOD.replace("field: amount, fn: mean", "field: amt, fn: mean"),
            "aggregations[0].field",
            "unknown field 'amt'",
        ),
        (GOOD.replace("fn: mean", "fn: median"), "aggregations[0].fn", "Input"),
        (
            GOOD.replace("[amount, channel,", "[amount, colour,"),
            "model.features[1]",
            "unknown feature 'colour'",
        ),
        (
            GOOD.replace("name: txn_count_10m", "name: amount_mean_1h"),
            "aggregations[1].name",
            "already a field or aggregation",
        ),
        (
            GOOD.replace(
                "  hour: {type: int", "  correction: {type: int, min: 0}\n  hour: {type: int"
            ),
            "fields",
            "must not redeclare entity/timestamp/label/event_id/correction: correction",
        ),
    ],
)
def test_each_error_names_key_and_rule(tmp_path: Path, broken: str, key: str, rule: str) -> None:
    problems = problems_of(tmp_path, broken)
    assert any(k == key and rule in r for k, r in problems), problems


def test_aggregating_a_category_is_refused(tmp_path: Path) -> None:
    text = GOOD.replace("field: amount, fn: mean", "field: channel, fn: mean")
    problems = problems_of(tmp_path, text)
    assert ("aggregations[0].fn", "mean needs a numeric field, 'channel' is category") in problems


def test_several_problems_are_reported_together(tmp_path: Path) -> None:
    text = GOOD.replace("name: payments\n", "").replace("window: 1h", "window: -1")
    keys = {k for k, _ in problems_of(tmp_path, text)}
    assert {"name", "aggregations[0].window"} <= keys


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, "name: [unclosed\nentity: x\n")
    assert problems[0][0].startswith("line ")
    assert "not valid YAML" in problems[0][1]


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FeatureSetError, match="cannot be read"):
        load_featureset(tmp_path / "nope.yaml")


def test_not_a_mapping(tmp_path: Path) -> None:
    assert problems_of(tmp_path, "- a\n- b\n") == [
        ("(top level)", "must be a mapping of keys to values")
    ]


def test_drift_section_defaults_when_absent(tmp_path: Path) -> None:
    featureset = load_featureset(write(tmp_path, GOOD))
    assert featureset.drift.performance.detector == "adwin"
    assert featureset.drift.psi.threshold == 0.25
    assert featureset.drift.kswin.window == 500
    assert featureset.drift_features == featureset.model.features


def test_drift_section_overrides_thresholds_and_features(tmp_path: Path) -> None:
    text = GOOD + (
        "drift:\n"
        "  performance: {detector: ddm, drift_threshold: 2.5}\n"
        "  psi: {threshold: 0.3, window: 200}\n"
        "  kswin: {enabled: false}\n"
        "  features: [amount, channel]\n"
    )
    featureset = load_featureset(write(tmp_path, text))
    assert featureset.drift.performance.detector == "ddm"
    assert featureset.drift.performance.drift_threshold == 2.5
    assert (featureset.drift.psi.threshold, featureset.drift.psi.window) == (0.3, 200)
    assert featureset.drift.kswin.enabled is False
    assert featureset.drift_features == ("amount", "channel")


@pytest.mark.parametrize(
    ("section", "key", "rule"),
    [
        ("  psi: {threshold: 0}\n", "drift.psi.threshold", "greater than 0"),
        ("  performance: {detector: page_hinkley}\n", "drift.performance.detector", "adwin"),
        ("  kswin: {window: 100, stat_size: 80}\n", "drift.kswin", "at most half of window"),
        ("  features: [amount, zip]\n", "drift.features[1]", "unknown feature 'zip'"),
        ("  psi: {bins: 10}\n", "drift.psi.bins", "unknown key"),
    ],
)
def test_drift_section_errors_name_key_and_rule(
    tmp_path: Path, section: str, key: str, rule: str
) -> None:
    problems = problems_of(tmp_path, GOOD + "drift:\n" + section)
    assert any(k == key and rule in r for k, r in problems), problems
