"""A backtest stream's features are the feature store's point-in-time rows."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from driftloop_cli.backtest.stream import StreamError, read_stream
from driftloop_core.featureset import load_featureset

FEATURESET = """\
name: pay
entity: customer_id
timestamp: ts
label: fraud
fields:
  amount: {type: float, min: 0}
  channel: {type: category, values: [web, pos]}
aggregations:
  - {name: amount_mean_1h, field: amount, fn: mean, window: 1h}
  - {name: count_10m, field: amount, fn: count, window: 10m}
model:
  task: binary_classification
  features: [amount, channel, amount_mean_1h, count_10m]
"""
T0 = 1_763_800_000_000
MINUTE = 60_000


def line(event_id: str, customer: str, minute: float, amount: float, **extra: object) -> str:
    data = {"event_id": event_id, "customer_id": customer, "ts": T0 + int(minute * MINUTE)}
    return json.dumps(data | {"amount": amount, "channel": "web"} | extra)


def test_aggregates_cover_earlier_events_only_and_history_counts(tmp_path: Path) -> None:
    path = tmp_path / "pay.yaml"
    path.write_text(FEATURESET)
    featureset = load_featureset(path)
    stream = read_stream(
        [
            line("h1", "a", 0, 10.0),  # history: never labelled
            line("e1", "a", 5, 20.0, fraud=0),
            line("e2", "b", 6, 99.0, fraud=1),
            line("e3", "a", 20, 60.0),  # labelled by a late label below
            json.dumps({"event_id": "e3", "fraud": 1}),
            json.dumps({"event_id": "nobody", "fraud": 0}),
            line("e1", "a", 5, 20.0, fraud=0),  # a replay: the store ignores it
        ],
        featureset,
        "pay.jsonl",
    )
    assert [e.event_id for e in stream.events] == ["e1", "e2", "e3"]
    first, second, third = stream.events
    assert first.features == {
        "amount": 20.0,
        "channel": "web",
        "amount_mean_1h": 10.0,
        "count_10m": 1.0,
    }
    assert math.isnan(float(second.features["amount_mean_1h"]))
    assert second.features["count_10m"] == 0.0
    # h1 and e1 in the hour, neither within the last 10 minutes; e3 itself not counted.
    assert third.features["amount_mean_1h"] == 15.0 and third.features["count_10m"] == 0.0
    assert third.label == 1
    assert stream.history == 1
    assert stream.skipped == {"label_without_observation": 1, "duplicate": 1}


def test_an_unknown_field_is_named_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "pay.yaml"
    path.write_text(FEATURESET)
    with pytest.raises(StreamError) as raised:
        read_stream(
            [line("e1", "a", 0, 1.0, fraud=0), "", line("e2", "a", 1, 1.0, fraud=0, colour=1)],
            load_featureset(path),
            "pay.jsonl",
        )
    assert raised.value.line == 3 and raised.value.field == "colour"
    assert str(raised.value).startswith("pay.jsonl line 3, field 'colour': ")
