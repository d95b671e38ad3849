"""The training core on generated labelled data: it learns, evaluates on the most
recent rows, exports an ONNX model that agrees with scikit-learn, and describes it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from driftloop_core.featureset import FeatureSet
from driftloop_trainer.onnx_model import (
    OnnxClassifier,
    check_parity,
    export_onnx,
    reference_distributions,
    signature_of,
)
from driftloop_trainer.training import (
    TrainingConfig,
    TrainingError,
    load_training_data,
    train,
)

FAST = TrainingConfig(
    candidates=(
        {"learning_rate": 0.1, "max_iter": 40, "max_leaf_nodes": 7},
        {"learning_rate": 0.1, "max_iter": 20, "max_leaf_nodes": 15},
    )
)


def test_rows_are_read_in_event_time_order(training_set: Path, featureset: FeatureSet) -> None:
    data = load_training_data(training_set, featureset)
    assert len(data) == 600
    assert np.all(np.diff(data.event_time_ms) >= 0)
    assert data.feature_names == featureset.model.features
    assert np.isnan(data.columns["amount"].astype(float)).any()
    assert "" in set(data.columns["channel"])


def test_gradient_boosting_learns_and_evaluates_on_the_latest_rows(
    training_set: Path, featureset: FeatureSet
) -> None:
    data = load_training_data(training_set, featureset)
    model = train(data, featureset, FAST)
    assert model.algorithm == "hist_gradient_boosting"
    assert len(model.evaluation) == 120
    assert model.evaluation.event_time_ms.min() >= model.reference.event_time_ms.max()
    assert model.metrics["roc_auc"] > 0.8
    assert 0.5 < model.metrics["accuracy"] <= 1.0
    assert 0 < model.metrics["log_loss"] < 0.7
    assert 0 <= model.metrics["calibration_error"] < 0.25
    assert len(model.search) == 2
    assert model.params in [c.params for c in model.search]


def test_training_is_deterministic(training_set: Path, featureset: FeatureSet) -> None:
    data = load_training_data(training_set, featureset)
    assert train(data, featureset, FAST).metrics == train(data, featureset, FAST).metrics


def test_onnx_export_matches_scikit_learn_and_declares_its_inputs(
    training_set: Path, featureset: FeatureSet
) -> None:
    data = load_training_data(training_set, featureset)
    model = train(data, featureset, FAST)
    onnx_bytes = export_onnx(model.pipeline, featureset, "payments")

    assert check_parity(onnx_bytes, model.eval_probabilities, model.evaluation) <= 1e-4
    onnx_probs = OnnxClassifier(onnx_bytes).positive_probability(model.evaluation)
    assert np.max(np.abs(onnx_probs - model.eval_probabilities)) <= 1e-4

    signature = signature_of(onnx_bytes)
    inputs = {spec.name: (spec.datatype, list(spec.shape)) for spec in signature.inputs}
    assert inputs == {
        "amount": ("FP32", [-1, 1]),
        "channel": ("BYTES", [-1, 1]),
        "hour": ("FP32", [-1, 1]),
        "amount_mean_1h": ("FP32", [-1, 1]),
        "txn_count_10m": ("FP32", [-1, 1]),
    }
    outputs = {spec.name: (spec.datatype, list(spec.shape)) for spec in signature.outputs}
    assert outputs["probabilities"] == ("FP32", [-1, 2])
    assert outputs["label"][0] == "INT64"


def test_logistic_regression_option(training_set: Path, featureset: FeatureSet) -> None:
    data = load_training_data(training_set, featureset)
    model = train(data, featureset, TrainingConfig(algorithm="logistic_regression"))
    assert model.algorithm == "logistic_regression"
    assert model.metrics["roc_auc"] > 0.8
    onnx_bytes = export_onnx(model.pipeline, featureset, "payments")
    assert check_parity(onnx_bytes, model.eval_probabilities, model.evaluation) <= 1e-4


def test_reference_distributions_cover_every_input(
    training_set: Path, featureset: FeatureSet
) -> None:
    data = load_training_data(training_set, featureset)
    reference = reference_distributions(data, featureset)
    assert set(reference) == set(featureset.model.features)
    amount = reference["amount"]
    assert amount.WhichOneof("kind") == "numeric"
    assert len(amount.numeric.edges) == 11
    assert sum(amount.numeric.fractions) == pytest.approx(1.0)
    assert list(amount.numeric.edges) == sorted(amount.numeric.edges)
    assert 0 < amount.missing_fraction < 0.05
    assert 0 < len(amount.numeric.sample) <= 200
    channel = reference["channel"].categorical.frequencies
    assert set(channel) == {"web", "pos", "atm"}
    assert sum(channel.values()) == pytest.approx(1.0)


def test_a_wrong_model_fails_parity(training_set: Path, featureset: FeatureSet) -> None:
    data = load_training_data(training_set, featureset)
    model = train(data, featureset, FAST)
    onnx_bytes = export_onnx(model.pipeline, featureset, "payments")
    with pytest.raises(TrainingError) as failure:
        check_parity(onnx_bytes, 1 - model.eval_probabilities, model.evaluation)
    assert failure.value.stage == "parity"


def test_an_empty_training_set_is_a_load_data_failure(
    empty_training_set: Path, featureset: FeatureSet
) -> None:
    data = load_training_data(empty_training_set, featureset)
    with pytest.raises(TrainingError) as failure:
        train(data, featureset, FAST)
    assert failure.value.stage == "load_data"
    assert "0 labelled rows" in failure.value.reason


def test_trainer_settings_choose_the_estimator_and_guard_the_split(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from driftloop_trainer.config import TrainerSettings

    monkeypatch.setenv("DRIFTLOOP_TRAINER_ALGORITHM", "logistic_regression")
    assert TrainerSettings().training_config().algorithm == "logistic_regression"
    with pytest.raises(ValueError, match="hold out"):
        TrainerSettings(train_fraction=0.8, validation_fraction=0.2).training_config()
