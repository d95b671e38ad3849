"""A whole training run without Kafka: every stage traced, lineage filled in, the
champion scored on the same held-out rows, failures named by their stage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from driftloop.v1 import common_pb2, events_pb2
from driftloop_core.artifacts import ArtifactStore
from driftloop_core.featureset import FeatureSet
from driftloop_trainer.handlers import STAGES, TrainingRunner
from driftloop_trainer.onnx_model import OnnxClassifier
from driftloop_trainer.ports import FileTrainingSets, LocalChampion, NoChampion
from driftloop_trainer.training import TrainingConfig, TrainingError, load_training_data
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

FAST = TrainingConfig(candidates=({"max_iter": 30, "max_leaf_nodes": 7}, {"max_iter": 15}))


def request(request_id: str = "r1") -> events_pb2.TrainingRequested:
    return events_pb2.TrainingRequested(
        request_id=request_id,
        model="payments",
        reason="test",
        trigger=events_pb2.TRAINING_TRIGGER_MANUAL,
        window=common_pb2.DataWindow(last_n=1000),
    )


async def test_a_run_produces_a_complete_model_trained_event(
    tmp_path: Path, training_set: Path, featureset: FeatureSet, spans: InMemorySpanExporter
) -> None:
    store = ArtifactStore(str(tmp_path / "artifacts"))
    runner = TrainingRunner(featureset, FileTrainingSets(training_set), NoChampion(), store, FAST)
    trained = await runner.run(request())

    assert trained.request_id == "r1"
    assert trained.algorithm == "hist_gradient_boosting"
    assert trained.metrics["roc_auc"] > 0.8
    assert set(trained.metrics) == {"accuracy", "roc_auc", "log_loss", "calibration_error"}
    assert not trained.champion_metrics
    assert not trained.HasField("champion_version")
    assert trained.params["champion"] == "no champion"
    assert trained.eval_rows == 120
    assert trained.eval_range.end.ToMilliseconds() > trained.eval_range.start.ToMilliseconds()
    assert trained.dataset.sha256 and trained.dataset.requested.last_n == 1000
    assert list(trained.feature_names) == list(featureset.model.features)
    assert set(trained.reference) == set(featureset.model.features)
    assert [spec.name for spec in trained.signature.inputs] == list(featureset.model.features)
    assert trained.trigger == events_pb2.TRAINING_TRIGGER_MANUAL
    assert trained.code_version.startswith("driftloop-trainer")
    assert trained.trained_at.seconds > 0

    onnx_bytes = store.get(trained.artifact)
    data = load_training_data(training_set, featureset)
    probabilities = OnnxClassifier(onnx_bytes).positive_probability(data)
    assert probabilities.shape == (600,)
    assert np.all((probabilities >= 0) & (probabilities <= 1))

    names = [span.name for span in spans.get_finished_spans()]
    for stage in STAGES:
        assert f"trainer.{stage}" in names


async def test_the_champion_is_scored_on_the_same_rows(
    tmp_path: Path, training_set: Path, featureset: FeatureSet
) -> None:
    store = ArtifactStore(str(tmp_path / "artifacts"))
    first = await TrainingRunner(
        featureset, FileTrainingSets(training_set), NoChampion(), store, FAST
    ).run(request("r1"))
    champion_file = tmp_path / "champion.onnx"
    champion_file.write_bytes(store.get(first.artifact))

    second = await TrainingRunner(
        featureset, FileTrainingSets(training_set), LocalChampion(champion_file, 3), store, FAST
    ).run(request("r2"))
    assert second.champion_version == 3
    # Same data, same deterministic training: the champion scores exactly as the new model.
    assert dict(second.champion_metrics) == pytest.approx(dict(second.metrics), abs=1e-4)
    assert second.params["champion"] == "champion v3 evaluated"


async def test_an_empty_training_set_fails_at_load_data(
    tmp_path: Path, empty_training_set: Path, featureset: FeatureSet
) -> None:
    store = ArtifactStore(str(tmp_path / "artifacts"))
    runner = TrainingRunner(
        featureset, FileTrainingSets(empty_training_set), NoChampion(), store, FAST
    )
    with pytest.raises(TrainingError) as failure:
        await runner.run(request())
    assert failure.value.stage == "load_data"


async def test_a_missing_training_set_fails_at_load_data(
    tmp_path: Path, featureset: FeatureSet
) -> None:
    store = ArtifactStore(str(tmp_path / "artifacts"))
    runner = TrainingRunner(
        featureset, FileTrainingSets(tmp_path / "nope.parquet"), NoChampion(), store, FAST
    )
    with pytest.raises(TrainingError) as failure:
        await runner.run(request())
    assert failure.value.stage == "load_data"
    assert "nope.parquet" in failure.value.reason
