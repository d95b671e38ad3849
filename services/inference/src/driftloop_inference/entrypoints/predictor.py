"""`driftloop.v1.Predictor/Predict`: one event in, one decision out.

The model's inputs (one `[-1, 1]` tensor per feature, named after it) are filled
from the request's own features first, then from the entity's online features,
looked up as of the event time within a deadline. What is still missing takes
its configured default (NaN / "" by default, as the trainer encodes a missing
value) or, with the `fail` policy, fails the call with FAILED_PRECONDITION
naming the features. When the lookup itself fails, the call answers UNAVAILABLE,
or, with `on_lookup_failure=defaults`, goes on as if the entity had no online
features. The prediction is offered to the predictions buffer,
which never blocks the call.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import grpc
import grpc.aio
import numpy as np
from driftloop.v1 import common_pb2, events_pb2, predictor_pb2, predictor_pb2_grpc
from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry import trace

from driftloop_inference.adapters.features import FeatureClient
from driftloop_inference.batching import Batcher
from driftloop_inference.codec import TensorSpec
from driftloop_inference.config import InferenceSettings
from driftloop_inference.entrypoints.oip import Context, abort_lookup, run_batched
from driftloop_inference.metrics import FEATURE_LOOKUP_FAILURES
from driftloop_inference.model import LoadedModel
from driftloop_inference.predictions import PredictionSink
from driftloop_inference.repository import ModelNotFound, ModelRepository, ModelUnavailable

SERVICE_NAME = "driftloop.v1.Predictor"
LABEL = "label"
PROBABILITIES = "probabilities"
_NUMERIC = {"FP16", "FP32", "FP64"}
_INTEGER = {"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64", "BOOL"}


class FeatureProblem(ValueError):
    """A feature value the model input cannot take: INVALID_ARGUMENT."""


def _convert(
    spec: TensorSpec, value: common_pb2.FeatureValue
) -> tuple[Any, common_pb2.FeatureValue]:
    """The value for the input tensor, and the FeatureValue reported as used."""
    kind = value.WhichOneof("kind")
    raw: Any = getattr(value, kind) if kind else None
    if spec.datatype == "BYTES":
        text = raw if isinstance(raw, str) else ("" if raw is None else str(raw))
        return text, common_pb2.FeatureValue(string_value=text)
    if isinstance(raw, str):
        try:
            raw = float(raw)
        except ValueError:
            raise FeatureProblem(
                f"feature '{spec.name}': expected a number ({spec.datatype}), got {raw!r}"
            ) from None
    if spec.datatype in _INTEGER:
        if isinstance(raw, float) and not raw.is_integer():
            raise FeatureProblem(
                f"feature '{spec.name}': expected an integer ({spec.datatype}), got {raw!r}"
            )
        number = int(raw)
        return number, common_pb2.FeatureValue(int_value=number)
    number_f = float(raw)
    return number_f, common_pb2.FeatureValue(float_value=number_f)


class PredictorServicer(predictor_pb2_grpc.PredictorServicer):
    def __init__(
        self,
        repository: ModelRepository,
        batcher: Batcher,
        features: FeatureClient | None,
        sink: PredictionSink,
        config: InferenceSettings,
    ) -> None:
        self._repository = repository
        self._batcher = batcher
        self._features = features
        self._sink = sink
        self._config = config

    def _default(self, spec: TensorSpec) -> common_pb2.FeatureValue:
        configured = self._config.feature_defaults.get(spec.name)
        if configured is None:
            if spec.datatype == "BYTES":
                return common_pb2.FeatureValue(string_value="")
            if spec.datatype in _INTEGER:
                return common_pb2.FeatureValue(int_value=0)
            return common_pb2.FeatureValue(float_value=math.nan)
        if isinstance(configured, str):
            return common_pb2.FeatureValue(string_value=configured)
        return common_pb2.FeatureValue(float_value=float(configured))

    async def _online(
        self, request: predictor_pb2.PredictRequest, context: Context
    ) -> Mapping[str, common_pb2.FeatureValue]:
        if self._features is None or not request.entity_id:
            return {}
        as_of: Timestamp | None = request.event_time if request.HasField("event_time") else None
        try:
            return await self._features.online(
                request.entity_id, [], as_of, context.time_remaining()
            )
        except grpc.aio.AioRpcError as error:
            FEATURE_LOOKUP_FAILURES.labels(error.code().name).inc()
            if self._config.on_lookup_failure == "defaults":
                span = trace.get_current_span()
                if span.is_recording():
                    span.set_attribute("driftloop.feature_lookup_failed", error.code().name)
                return {}
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"online features of entity '{request.entity_id}' from the feature store at "
                f"{self._features.target}: {error.code().name}: {error.details()}",
            )
        raise AssertionError("unreachable")

    async def Predict(
        self, request: predictor_pb2.PredictRequest, context: Context
    ) -> predictor_pb2.PredictResponse:
        received = time.perf_counter()
        which = request.WhichOneof("version_selector")
        version = ""
        if which == "version":
            version = str(request.version)
        elif which == "alias" and request.alias not in ("", "champion"):
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"alias '{request.alias}' is not served; only 'champion' (the current version)",
            )
        try:
            model = self._repository.resolve(request.model, version)
        except (ModelNotFound, ModelUnavailable) as error:
            await abort_lookup(context, error)
        for spec in model.inputs:
            if len(spec.shape) not in (1, 2) or spec.shape[1:] not in ((), (1,), (-1,)):
                await context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"model {model.name} v{model.version}: Predict needs one [-1, 1] input per "
                    f"feature; input '{spec.name}' is {spec.describe()}",
                )
        given = request.features
        needs_lookup = any(spec.name not in given for spec in model.inputs)
        online = await self._online(request, context) if needs_lookup else {}
        feeds: dict[str, Any] = {}
        used: dict[str, common_pb2.FeatureValue] = {}
        missing: list[str] = []
        try:
            for spec in model.inputs:
                value = given.get(spec.name) if spec.name in given else online.get(spec.name)
                if value is None or value.WhichOneof("kind") is None:
                    missing.append(spec.name)
                    value = self._default(spec)
                converted, reported = _convert(spec, value)
                shape = (1,) * len(spec.shape)
                if spec.datatype == "BYTES":
                    array = np.empty(shape, dtype=object)
                    array.fill(converted)
                else:
                    array = np.full(shape, converted, dtype=spec.dtype)
                feeds[spec.name] = array
                used[spec.name] = reported
        except FeatureProblem as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        if missing and self._config.missing_features == "fail":
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"missing features for entity '{request.entity_id}': {', '.join(missing)} "
                "(neither in the request nor in the feature store)",
            )
        outputs = await run_batched(self._batcher, model, feeds, 1, context)
        if model.swap_context is not None:
            model.first_served("Predict")
        label, probability = self._decision(model, outputs)
        if label is None:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"model {model.name} v{model.version} has neither a '{LABEL}' nor a "
                f"'{PROBABILITIES}' output",
            )
        response = predictor_pb2.PredictResponse(
            event_id=request.event_id,
            model=model.name,
            model_version=model.version,
            label=label,
            probability=probability,
            features_used=used,
            defaults_applied=missing,
        )
        prediction = events_pb2.Prediction(
            event_id=request.event_id,
            entity_id=request.entity_id,
            model=model.name,
            model_version=model.version,
            label=label,
            probability=probability,
            features=used,
            defaults_applied=missing,
        )
        prediction.latency.FromNanoseconds(int((time.perf_counter() - received) * 1e9))
        if request.HasField("event_time"):
            prediction.event_time.CopyFrom(request.event_time)
        prediction.predicted_at.GetCurrentTime()
        self._sink.offer(prediction)
        return response

    @staticmethod
    def _decision(model: LoadedModel, outputs: list[Any]) -> tuple[int | None, float]:
        by_name = dict(zip(model.output_names, outputs, strict=True))
        probability = math.nan
        probs = by_name.get(PROBABILITIES)
        if probs is not None:
            flat = np.asarray(probs).reshape(1, -1)[0]
            probability = float(flat[1] if flat.size >= 2 else flat[0])
        labels = by_name.get(LABEL)
        if labels is not None:
            return int(np.asarray(labels).ravel()[0]), probability
        if probs is not None:
            return int(probability >= 0.5), probability
        return None, probability
