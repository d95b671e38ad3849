"""The demo scenario, checked offline: the aggregates are the feature store's, the
fraud rate is meaningful, and the trainer's own code learns the concept before
the drift, loses it after, and learns it again from post-drift rows."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from driftloop_cli.demo.scenario import (
    DemoEvent,
    ScenarioConfig,
    ScenarioError,
    build_scenario,
)
from driftloop_core.feature_math import EntityState, FeatureMath
from driftloop_core.featureset import default_featureset_path, load_featureset
from driftloop_trainer.training import TrainedModel, TrainingData, classification_metrics, train

FEATURESET = load_featureset(default_featureset_path())


def training_data(events: tuple[DemoEvent, ...]) -> TrainingData:
    """Rows as the feature store's offline log would hold them."""
    mean = [math.nan if e.amount_mean_1h is None else e.amount_mean_1h for e in events]
    columns = {
        "amount": np.array([e.amount for e in events], dtype=np.float32).astype(np.float64),
        "channel": np.array([e.channel for e in events], dtype=object),
        "hour": np.array([e.hour for e in events], dtype=np.float64),
        "amount_mean_1h": np.array(mean, dtype=np.float32).astype(np.float64),
        "txn_count_10m": np.array([e.txn_count_10m for e in events], dtype=np.float64),
    }
    return TrainingData(
        tuple(FEATURESET.model.features),
        columns,
        np.array([e.is_fraud for e in events], dtype=np.int64),
        np.array([e.offset_ms for e in events], dtype=np.int64),
        tuple(e.event_id for e in events),
    )


def accuracy(model: TrainedModel, scored: TrainingData) -> float:
    probabilities = model.pipeline.predict_proba(scored.matrix())[:, 1]
    return classification_metrics(scored.labels, probabilities)["accuracy"]


def without_aggregates(data: TrainingData) -> TrainingData:
    """The same rows with both aggregates held constant: what raw fields alone tell."""
    columns = dict(data.columns)
    for name in ("amount_mean_1h", "txn_count_10m"):
        columns[name] = np.zeros(len(data))
    return replace(data, columns=columns)


def test_the_same_seed_gives_the_same_events_and_another_seed_others() -> None:
    config = ScenarioConfig(events=600, seed=3)
    assert build_scenario(config).events == build_scenario(config).events
    other = build_scenario(ScenarioConfig(events=600, seed=4))
    assert other.events != build_scenario(config).events


def test_aggregates_are_what_the_feature_store_computes() -> None:
    scenario = build_scenario(ScenarioConfig(events=1500))
    math_ = FeatureMath(FEATURESET)
    states: dict[str, EntityState] = {}
    assert scenario.history and all(e.index < 0 for e in scenario.history)
    for event in (*scenario.history, *scenario.events):
        state = states.setdefault(event.customer_id, EntityState())
        values = {"amount": event.amount, "channel": event.channel, "hour": event.hour}
        row = math_.point_in_time_row(state, event.offset_ms, values)
        assert row["txn_count_10m"] == event.txn_count_10m, event
        if event.amount_mean_1h is None:
            assert "amount_mean_1h" not in row
        else:
            assert row["amount_mean_1h"] == pytest.approx(event.amount_mean_1h)
        math_.apply(state, event.event_id, event.offset_ms, values)


def test_events_are_valid_observations_in_time_order_with_a_known_onset() -> None:
    scenario = build_scenario(ScenarioConfig(drift_at=0.4))
    assert scenario.onset == 1920
    offsets = [e.offset_ms for e in scenario]
    assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
    assert len({e.event_id for e in scenario}) == len(scenario)
    for event in scenario.events[:50]:
        observation = event.observation(1_763_800_000_000)
        assert set(observation) == {"event_id", "customer_id", "ts", *FEATURESET.fields}
        assert observation["channel"] in ("web", "pos", "atm")
        assert 0 <= event.hour <= 23 and event.amount >= 0
        assert event.label() == {"event_id": event.event_id, "is_fraud": event.is_fraud}
    # Fraud is common enough that accuracy means something, on both sides of the drift.
    assert 0.2 <= scenario.fraud_rate(0, 1920) <= 0.35
    assert 0.2 <= scenario.fraud_rate(1920) <= 0.35


def test_the_drift_breaks_a_good_model_and_post_drift_rows_repair_it() -> None:
    scenario = build_scenario(ScenarioConfig(events=3200))
    onset = scenario.onset
    assert onset is not None
    events = scenario.events
    # What the loop does: a first model from the first labelled rows, a second
    # one from rows after the change.
    first = train(training_data(events[:500]), FEATURESET)
    second = train(training_data(events[onset : onset + 600]), FEATURESET)
    before = accuracy(first, training_data(events[500:onset]))
    during = accuracy(first, training_data(events[onset:]))
    after = accuracy(second, training_data(events[onset + 600 :]))
    assert before >= 0.94
    assert during <= before - 0.1
    assert after >= 0.94
    # The online aggregates matter: without them the same search does clearly worse.
    blind = train(without_aggregates(training_data(events[:500])), FEATURESET)
    assert accuracy(blind, without_aggregates(training_data(events[500:onset]))) <= before - 0.05


def test_a_stationary_stream_keeps_its_concept() -> None:
    scenario = build_scenario(ScenarioConfig(kind="stationary", events=2400))
    assert scenario.onset is None
    events = scenario.events
    model = train(training_data(events[:500]), FEATURESET)
    assert accuracy(model, training_data(events[1800:])) >= 0.94


@pytest.mark.parametrize(
    ("config", "field"),
    [
        (ScenarioConfig(events=10), "events"),
        (ScenarioConfig(drift_at=0.95), "drift_at"),
        (ScenarioConfig(customers=3), "customers"),
        (ScenarioConfig(label_noise=0.7), "label_noise"),
    ],
)
def test_a_bad_option_is_refused_naming_it(config: ScenarioConfig, field: str) -> None:
    with pytest.raises(ScenarioError, match=f"^{field}: must be"):
        build_scenario(config)
