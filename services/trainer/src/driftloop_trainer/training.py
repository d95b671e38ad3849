"""The training core: a labelled Parquet training set in, a fitted and evaluated pipeline out.

Pure on purpose (no Kafka, no gRPC): the service, the tests and a notebook all
train exactly the same way. Rows are ordered by event time and split into
train / validation / held-out test slices, so the model is always judged on
data more recent than anything it learned from, as it will be in production.
Missing numbers stay NaN (HistGradientBoosting handles them; logistic
regression imputes), missing categories become the empty string, which the
one-hot encoder treats as one more value at training and ignores if unseen.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from driftloop_core.featureset import FeatureSet
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

Algorithm = Literal["hist_gradient_boosting", "logistic_regression"]
FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
ObjectArray = npt.NDArray[np.object_]

MISSING_CATEGORY = ""

# A few candidates, not a grid: each one is a sensible, different trade-off
# between capacity and regularisation, and the whole search stays cheap.
DEFAULT_CANDIDATES: Mapping[Algorithm, tuple[dict[str, Any], ...]] = {
    "hist_gradient_boosting": (
        {"learning_rate": 0.1, "max_iter": 100, "max_leaf_nodes": 31},
        {"learning_rate": 0.05, "max_iter": 200, "max_leaf_nodes": 15},
        {"learning_rate": 0.1, "max_iter": 60, "max_leaf_nodes": 7, "l2_regularization": 1.0},
    ),
    "logistic_regression": ({"C": 0.1}, {"C": 1.0}, {"C": 10.0}),
}


class TrainingError(Exception):
    """A run that cannot go on; `stage` names where it stopped."""

    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(f"{stage}: {reason}")
        self.stage = stage
        self.reason = reason


@dataclass(frozen=True)
class TrainingConfig:
    algorithm: Algorithm = "hist_gradient_boosting"
    train_fraction: float = 0.6
    validation_fraction: float = 0.2
    random_state: int = 0
    candidates: tuple[dict[str, Any], ...] | None = None
    # Fewer rows than this cannot make three meaningful slices.
    min_rows: int = 30
    # OpenMP threads for fitting and predicting: 1 by default, because the trainer
    # shares its host with the other services and OpenMP threads that spin-wait
    # for a busy core made one search 20x slower on two cores.
    threads: int = 1

    def search_space(self) -> tuple[dict[str, Any], ...]:
        return self.candidates or DEFAULT_CANDIDATES[self.algorithm]


def is_categorical(featureset: FeatureSet, name: str) -> bool:
    return featureset.feature_type(name) in ("category", "string")


@dataclass(frozen=True)
class TrainingData:
    """Labelled rows in event-time order, one array per model feature."""

    feature_names: tuple[str, ...]
    columns: Mapping[str, FloatArray | ObjectArray]
    labels: IntArray
    event_time_ms: IntArray
    event_ids: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: npt.NDArray[np.intp]) -> TrainingData:
        return TrainingData(
            self.feature_names,
            {name: column[index] for name, column in self.columns.items()},
            self.labels[index],
            self.event_time_ms[index],
            tuple(self.event_ids[i] for i in index),
        )

    def matrix(self) -> ObjectArray:
        """The rows as the 2-D object array the pipeline is fitted on, in feature order."""
        out = np.empty((len(self), len(self.feature_names)), dtype=object)
        for j, name in enumerate(self.feature_names):
            out[:, j] = self.columns[name]
        return out


def _numeric(column: pa.ChunkedArray) -> FloatArray:
    as_float = pc.fill_null(column.cast(pa.float64()), math.nan)
    # Serving sends numbers as FP32; training on the same values keeps ONNX and
    # scikit-learn in agreement at split thresholds.
    values: FloatArray = as_float.to_numpy().astype(np.float32).astype(np.float64)
    return values


def _categorical(column: pa.ChunkedArray) -> ObjectArray:
    values = column.cast(pa.string()).to_pylist()
    return np.array(
        [MISSING_CATEGORY if value is None else value for value in values], dtype=object
    )


def load_training_data(path: Path | str, featureset: FeatureSet) -> TrainingData:
    """Read a training-set Parquet file (the feature store's schema), sorted by event time.

    A model feature absent from the file (written before it existed) is all missing.
    """
    try:
        table = pq.read_table(str(path))
    except (OSError, pa.ArrowInvalid) as error:
        raise TrainingError("load_data", f"cannot read training set {path}: {error}") from None
    for required in ("event_id", "event_time", "label"):
        if required not in table.column_names:
            raise TrainingError("load_data", f"training set has no {required!r} column")
    if table.column("label").null_count:
        raise TrainingError("load_data", "training set has rows without a label")
    names = tuple(featureset.model.features)
    rows = table.num_rows
    columns: dict[str, FloatArray | ObjectArray] = {}
    for name in names:
        categorical = is_categorical(featureset, name)
        if name not in table.column_names:
            columns[name] = (
                np.full(rows, MISSING_CATEGORY, dtype=object)
                if categorical
                else np.full(rows, math.nan)
            )
        elif categorical:
            columns[name] = _categorical(table.column(name))
        else:
            columns[name] = _numeric(table.column(name))
    labels = table.column("label").to_numpy().astype(np.int64)
    times = table.column("event_time").cast(pa.int64()).to_numpy().astype(np.int64)
    ids = tuple(str(value) for value in table.column("event_id").to_pylist())
    data = TrainingData(names, columns, labels, times, ids)
    order = np.lexsort((np.array(ids, dtype=object).astype(str), times))
    return data.take(order.astype(np.intp))


def build_pipeline(
    featureset: FeatureSet,
    algorithm: Algorithm,
    params: Mapping[str, Any],
    random_state: int = 0,
) -> Pipeline:
    """One-hot categoricals, numbers as they are (imputed and scaled for logistic
    regression), then the classifier. Columns are addressed by position."""
    names = featureset.model.features
    categorical = [i for i, name in enumerate(names) if is_categorical(featureset, name)]
    numeric = [i for i, name in enumerate(names) if not is_categorical(featureset, name)]
    numeric_step: Any
    classifier: Any
    if algorithm == "logistic_regression":
        numeric_step = Pipeline(
            [("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())]
        )
        classifier = LogisticRegression(max_iter=1000, random_state=random_state, **params)
    else:
        numeric_step = "passthrough"
        classifier = HistGradientBoostingClassifier(
            early_stopping=False, random_state=random_state, **params
        )
    transformers: list[tuple[str, Any, list[int]]] = []
    if numeric:
        transformers.append(("numeric", numeric_step, numeric))
    if categorical:
        transformers.append(
            (
                "categorical",
                OneHotEncoder(handle_unknown="ignore", sparse_output=False),
                categorical,
            )
        )
    return Pipeline(
        [
            ("features", ColumnTransformer(transformers, sparse_threshold=0.0)),
            ("classifier", classifier),
        ]
    )


def expected_calibration_error(
    labels: IntArray, probabilities: FloatArray, bins: int = 10
) -> float:
    """Weighted mean gap between predicted probability and observed rate, over
    equal-width probability bins."""
    if len(labels) == 0:
        return 0.0
    index = np.minimum((probabilities * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        mask = index == b
        if mask.any():
            gap = abs(float(labels[mask].mean()) - float(probabilities[mask].mean()))
            total += gap * int(mask.sum()) / len(labels)
    return total


def classification_metrics(labels: IntArray, probabilities: FloatArray) -> dict[str, float]:
    """accuracy, log_loss, calibration_error and, when both classes occur, roc_auc."""
    p = np.clip(probabilities, 1e-15, 1 - 1e-15)
    metrics = {
        "accuracy": float(accuracy_score(labels, (probabilities >= 0.5).astype(np.int64))),
        "log_loss": float(log_loss(labels, p, labels=[0, 1])),
        "calibration_error": expected_calibration_error(labels, probabilities),
    }
    if len(np.unique(labels)) == 2:
        metrics["roc_auc"] = float(roc_auc_score(labels, probabilities))
    return metrics


def positive_probability(pipeline: Pipeline, data: TrainingData) -> FloatArray:
    probabilities: FloatArray = pipeline.predict_proba(data.matrix())[:, 1].astype(np.float64)
    return probabilities


@dataclass(frozen=True)
class Split:
    train: TrainingData
    validation: TrainingData
    test: TrainingData


def time_split(data: TrainingData, config: TrainingConfig) -> Split:
    """Oldest rows to train, the next to validate, the most recent held out."""
    n = len(data)
    if n < config.min_rows:
        raise TrainingError(
            "load_data", f"training set has {n} labelled rows, at least {config.min_rows} needed"
        )
    n_train = int(n * config.train_fraction)
    n_val = int(n * config.validation_fraction)
    index = np.arange(n, dtype=np.intp)
    split = Split(
        data.take(index[:n_train]),
        data.take(index[n_train : n_train + n_val]),
        data.take(index[n_train + n_val :]),
    )
    if len(np.unique(split.train.labels)) < 2:
        raise TrainingError("load_data", "the training slice holds only one class")
    return split


@dataclass(frozen=True)
class CandidateResult:
    params: dict[str, Any]
    validation_metrics: dict[str, float]


@dataclass(frozen=True)
class TrainedModel:
    pipeline: Pipeline
    algorithm: Algorithm
    params: dict[str, Any]
    metrics: dict[str, float]
    evaluation: TrainingData
    eval_probabilities: FloatArray
    reference: TrainingData
    search: tuple[CandidateResult, ...] = field(default_factory=tuple)


def search(
    split: Split, featureset: FeatureSet, config: TrainingConfig
) -> tuple[dict[str, Any], tuple[CandidateResult, ...]]:
    """Fit each candidate on the training slice; the best validation log loss wins."""
    results: list[CandidateResult] = []
    for params in config.search_space():
        pipeline = build_pipeline(featureset, config.algorithm, params, config.random_state)
        pipeline.fit(split.train.matrix(), split.train.labels)
        if len(split.validation):
            metrics = classification_metrics(
                split.validation.labels, positive_probability(pipeline, split.validation)
            )
        else:
            metrics = {"log_loss": 0.0}
        results.append(CandidateResult(dict(params), metrics))
    best = min(results, key=lambda result: result.validation_metrics["log_loss"])
    return best.params, tuple(results)


def concat(parts: Sequence[TrainingData]) -> TrainingData:
    first = parts[0]
    return TrainingData(
        first.feature_names,
        {
            name: np.concatenate([part.columns[name] for part in parts])
            for name in first.feature_names
        },
        np.concatenate([part.labels for part in parts]),
        np.concatenate([part.event_time_ms for part in parts]),
        tuple(event_id for part in parts for event_id in part.event_ids),
    )


def fit_best(
    split: Split, featureset: FeatureSet, config: TrainingConfig, params: Mapping[str, Any]
) -> tuple[Pipeline, TrainingData]:
    """Refit the chosen candidate on train + validation; return it and those rows."""
    rows = concat([split.train, split.validation])
    pipeline = build_pipeline(featureset, config.algorithm, params, config.random_state)
    pipeline.fit(rows.matrix(), rows.labels)
    return pipeline, rows


def train(
    data: TrainingData, featureset: FeatureSet, config: TrainingConfig | None = None
) -> TrainedModel:
    """Split, search, refit and evaluate in one call (the service runs the stages one by one)."""
    config = config or TrainingConfig()
    split = time_split(data, config)
    params, results = search(split, featureset, config)
    pipeline, fitted_on = fit_best(split, featureset, config, params)
    probabilities = positive_probability(pipeline, split.test)
    return TrainedModel(
        pipeline=pipeline,
        algorithm=config.algorithm,
        params=params,
        metrics=classification_metrics(split.test.labels, probabilities),
        evaluation=split.test,
        eval_probabilities=probabilities,
        reference=fitted_on,
        search=results,
    )
