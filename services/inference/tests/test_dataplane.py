"""The data plane without a transport: real ONNX models and the real batcher,
a feature store and a predictions outbox of the test's own; and the one mapping
of its errors to gRPC status codes."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc
import numpy as np
import pytest
from driftloop.v1 import common_pb2, events_pb2
from driftloop_core.featureset import default_featureset_path, load_featureset
from driftloop_inference.adapters.onnx import load_model
from driftloop_inference.batching import Batcher
from driftloop_inference.codec import InvalidTensor
from driftloop_inference.config import InferenceSettings
from driftloop_inference.dataplane import DataPlane, PredictRequest
from driftloop_inference.entrypoints.status import grpc_errors, status_code
from driftloop_inference.errors import (
    DeadlineExpired,
    FeaturesUnavailable,
    InferenceError,
    InvalidInput,
    MissingFeatures,
    ModelNotFound,
    ModelUnavailable,
    Overloaded,
    UnsupportedModel,
)
from driftloop_inference.model import TensorSpec
from driftloop_inference.online.arena import Arena, ArenaConfig
from driftloop_inference.online.host import ArenaHost
from driftloop_inference.predict import featureset_inputs
from driftloop_inference.repository import ModelRepository
from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry import trace

FEATURES = ("amount", "channel", "hour", "amount_mean_1h", "txn_count_10m")


def fv(value: float | str) -> common_pb2.FeatureValue:
    if isinstance(value, str):
        return common_pb2.FeatureValue(string_value=value)
    return common_pb2.FeatureValue(float_value=value)


class Store:
    """Online features by entity; `down` makes every lookup fail."""

    target = "features.test:1"

    def __init__(self, values: dict[str, dict[str, common_pb2.FeatureValue]]) -> None:
        self.values = values
        self.down = False
        self.lookups: list[tuple[str, Timestamp | None]] = []

    async def online(
        self, entity_id: str, names: list[str], as_of: Timestamp | None, timeout_s: float | None
    ) -> Mapping[str, common_pb2.FeatureValue]:
        self.lookups.append((entity_id, as_of))
        if self.down:
            raise FeaturesUnavailable("UNAVAILABLE: connection refused", code="UNAVAILABLE")
        return self.values.get(entity_id, {})


class Outbox:
    def __init__(self) -> None:
        self.offered: list[events_pb2.Prediction] = []

    def offer(self, prediction: events_pb2.Prediction) -> None:
        self.offered.append(prediction)


class Plane:
    """A data plane over a repository named `payments`, and what it talks to;
    with `arena`, the online learners beside the champion (their feed is the test's)."""

    def __init__(self, arena: ArenaConfig | None = None, **config: Any) -> None:
        self.config = InferenceSettings(events=False, **config)
        self.repository = ModelRepository("payments", load_model)
        self.batcher = Batcher(enabled=True, max_batch_size=8, max_queue_delay_us=0, capacity=16)
        self.store = Store({"c7": {"amount_mean_1h": fv(55.0), "amount": fv(1.0)}})
        self.outbox = Outbox()
        self.arena = None
        inputs: tuple[TensorSpec, ...] = ()
        if arena is not None:
            self.arena = ArenaHost("payments", Arena(arena), self.champion)
            inputs = featureset_inputs(load_featureset(default_featureset_path()))
        self.plane = DataPlane(
            self.repository, self.batcher, self.store, self.outbox, self.config, self.arena, inputs
        )

    def champion(self) -> int | None:
        current = self.repository.current
        return None if current is None else current.version


@pytest.fixture
async def make_plane() -> AsyncIterator[Any]:
    planes: list[Plane] = []

    async def make(model: bytes | None, arena: ArenaConfig | None = None, **config: Any) -> Plane:
        plane = Plane(arena, **config)
        plane.batcher.start()
        planes.append(plane)
        if model is not None:
            assert await plane.repository.load_bytes(4, model, None)
        return plane

    yield make
    for plane in planes:
        await plane.batcher.stop()


async def test_predict_takes_request_then_online_then_default_values_and_offers_the_event(
    make_plane: Any, payments_v1: bytes
) -> None:
    made = await make_plane(payments_v1)
    event_time = Timestamp(seconds=1_763_800_000)
    decision = await made.plane.predict(
        PredictRequest(
            event_id="e1",
            entity_id="c7",
            features={"amount": fv(120.0), "channel": fv("web"), "hour": fv("3")},
            event_time=event_time,
        ),
        timeout_s=5.0,
    )
    assert made.store.lookups == [("c7", event_time)]
    assert decision.model == "payments" and decision.model_version == 4
    assert decision.features_used["amount"].float_value == 120.0  # the request wins
    assert decision.features_used["hour"].float_value == 3.0  # a number sent as text
    assert decision.features_used["amount_mean_1h"].float_value == 55.0
    assert decision.defaults_applied == ["txn_count_10m"]
    assert math.isnan(decision.features_used["txn_count_10m"].float_value)
    assert decision.label in (0, 1) and 0.0 <= decision.probability <= 1.0
    [prediction] = made.outbox.offered
    assert (prediction.event_id, prediction.entity_id) == ("e1", "c7")
    assert (prediction.label, prediction.probability) == (decision.label, decision.probability)
    assert prediction.event_time == event_time and prediction.predicted_at.seconds > 0
    assert list(prediction.defaults_applied) == ["txn_count_10m"]

    # Every feature given: no lookup at all.
    given = {name: fv("web" if name == "channel" else 1.0) for name in FEATURES}
    await made.plane.predict(PredictRequest(entity_id="c7", features=given), None)
    assert len(made.store.lookups) == 1


async def test_predict_refusals_name_what_is_wrong(make_plane: Any, payments_v1: bytes) -> None:
    made = await make_plane(payments_v1)
    plane = made.plane
    with pytest.raises(ModelNotFound, match="alias 'shadow' is not served; only 'champion'"):
        await plane.predict(PredictRequest(alias="shadow"), None)
    with pytest.raises(ModelNotFound, match="model 'other' is not served here"):
        await plane.predict(PredictRequest(model="other"), None)
    with pytest.raises(ModelNotFound, match="version '9' is not loaded; loaded versions: 4"):
        await plane.predict(PredictRequest(version="9"), None)
    with pytest.raises(InvalidInput) as caught:
        await plane.predict(PredictRequest(features={"hour": fv("three")}), None)
    assert (caught.value.field, caught.value.rule) == ("hour", "number")
    assert str(caught.value) == "feature 'hour': expected a number (FP32), got 'three'"
    assert not made.outbox.offered

    strict = await make_plane(payments_v1, missing_features="fail")
    with pytest.raises(MissingFeatures) as missing:
        await strict.plane.predict(PredictRequest(entity_id="c7"), None)
    assert missing.value.missing == ["channel", "hour", "txn_count_10m"]
    assert str(missing.value) == (
        "missing features for entity 'c7': channel, hour, txn_count_10m "
        "(neither in the request nor in the feature store)"
    )


async def test_a_failed_lookup_follows_the_lookup_failure_policy(
    make_plane: Any, payments_v1: bytes
) -> None:
    request = PredictRequest(
        entity_id="c7", features={"amount": fv(1.0), "channel": fv("pos"), "hour": fv(2.0)}
    )
    unavailable = await make_plane(payments_v1)
    unavailable.store.down = True
    with pytest.raises(FeaturesUnavailable) as caught:
        await unavailable.plane.predict(request, None)
    assert str(caught.value) == (
        "online features of entity 'c7' from the feature store at features.test:1: "
        "UNAVAILABLE: connection refused"
    )
    lenient = await make_plane(payments_v1, on_lookup_failure="defaults")
    lenient.store.down = True
    decision = await lenient.plane.predict(request, None)
    assert decision.defaults_applied == ["amount_mean_1h", "txn_count_10m"]


async def test_nothing_loaded_yet_is_unavailable_not_missing(make_plane: Any) -> None:
    made = await make_plane(None)
    assert not made.plane.ready and not made.plane.model_ready("payments", "")
    with pytest.raises(ModelUnavailable, match="model 'payments' is not loaded yet"):
        made.plane.model("", "")
    [state] = made.plane.index(ready_only=False)
    assert (state.name, state.state, state.reason) == (
        "payments",
        "UNAVAILABLE",
        "no version loaded yet",
    )
    assert made.plane.index(ready_only=True) == []


async def test_with_no_version_loaded_an_online_learner_answers_from_the_first_event(
    make_plane: Any, spans: Any
) -> None:
    made = await make_plane(None, ArenaConfig())
    request = PredictRequest(
        event_id="e1",
        entity_id="c7",
        features={"amount": fv(120.0), "channel": fv("web"), "hour": fv(3.0)},
    )
    with trace.get_tracer("test").start_as_current_span("request"):
        decision = await made.plane.predict(request, None)
    assert decision.learner.startswith("online:") and decision.model_version == 0
    assert decision.label in (0, 1)
    # The feature set's features, filled as a model's inputs would be.
    assert decision.features_used["amount"].float_value == 120.0
    assert decision.features_used["amount_mean_1h"].float_value == 55.0
    assert decision.defaults_applied == ["txn_count_10m"]
    [prediction] = made.outbox.offered
    assert (prediction.learner, prediction.model_version) == (decision.learner, 0)
    assert prediction.label == decision.label
    assert prediction.model == "payments" and not prediction.HasField("champion")
    [span] = [s for s in spans.get_finished_spans() if s.name == "request"]
    assert span.attributes is not None
    assert span.attributes["driftloop.learner"] == decision.learner


async def test_while_a_known_champion_loads_untrained_learners_do_not_answer(
    make_plane: Any,
) -> None:
    # A restarted replica: the registry named v4, still loading, the arena fresh.
    made = await make_plane(None, ArenaConfig())
    assert made.arena is not None
    made.repository.expected = 4
    request = PredictRequest(event_id="e1", entity_id="c7", features={"amount": fv(1.0)})
    with pytest.raises(ModelUnavailable, match="v4 is being loaded"):
        await made.plane.predict(request, None)
    assert made.outbox.offered == []
    # Once the learners have learnt a label, they answer meanwhile.
    made.arena.arena.observe("old", {"amount": 1.0}, None)
    made.arena.arena.label("old", 1)
    decision = await made.plane.predict(request, None)
    assert decision.learner.startswith("online:") and decision.model_version == 0


async def test_a_leading_learner_answers_and_the_champion_runs_beside_it(
    make_plane: Any, payments_v1: bytes
) -> None:
    made = await make_plane(payments_v1, ArenaConfig(min_scored=5, window=10))
    assert made.arena is not None
    given = {"amount": fv(120.0), "channel": fv("web"), "hour": fv(3.0)}
    learners: list[str] = []
    for i in range(12):
        decision = await made.plane.predict(PredictRequest(event_id=f"e{i}", features=given), None)
        learners.append(decision.learner)
        prediction = made.outbox.offered[-1]
        champion = prediction.champion.label if prediction.learner else prediction.label
        made.arena.observe(prediction)
        made.arena.label("payments", f"e{i}", 1 - champion)  # the champion is always wrong
    # The champion answers until the evidence says otherwise (5 scored events).
    assert learners[:5] == [""] * 5 and learners[-1].startswith("online:"), learners
    served = made.outbox.offered[-1]
    assert served.learner == learners[-1] and served.model_version == 0
    assert served.label == 1 - served.champion.label, "the learner learnt the truth"
    assert served.champion.model_version == 4
    assert math.isfinite(served.champion.probability)

    # Asked by version, the version answers whoever leads.
    decision = await made.plane.predict(PredictRequest(version="4", features=given), None)
    assert (decision.learner, decision.model_version) == ("", 4)


async def test_infer_checks_the_batch_dimension_and_the_deadline(
    make_plane: Any, generic_model: bytes
) -> None:
    made = await make_plane(generic_model)
    model = made.plane.model("payments", "4")
    feeds = {"x": np.ones((2, 3)), "k": np.ones((1, 1), dtype=np.int64)}
    with pytest.raises(InvalidInput) as caught:
        await made.plane.infer(model, feeds, None)
    assert caught.value.field == "k"
    assert str(caught.value) == "input 'k': expected batch dimension 2 (as input 'x'), got 1"
    feeds["k"] = np.ones((2, 1), dtype=np.int64)
    with pytest.raises(DeadlineExpired, match="deadline exceeded"):
        await made.plane.infer(model, feeds, 0.0)
    y, z = await made.plane.infer(model, feeds, 5.0)
    np.testing.assert_array_equal(y, np.full((2, 3), 2.0))
    np.testing.assert_array_equal(z, np.full((2, 1), 2))

    # Values the runtime refuses are the caller's error, naming the model.
    feeds["k"] = np.ones((2, 2), dtype=np.int64)
    with pytest.raises(InvalidInput, match="model payments v4 refused the inputs"):
        await made.plane.infer(model, feeds, None)


async def test_the_first_answer_after_a_traced_swap_ends_the_loop_trace(
    make_plane: Any, generic_model: bytes, spans: Any
) -> None:
    made = await make_plane(None)
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("inference.model_swap") as swap:
        assert await made.repository.load_bytes(5, generic_model, None)
    model = made.plane.model("", "")
    feeds = {"x": np.ones((1, 3)), "k": np.ones((1, 1), dtype=np.int64)}
    with tracer.start_as_current_span("request") as request:
        await made.plane.infer(model, feeds, None)
    await made.plane.infer(model, feeds, None)
    [first] = [s for s in spans.get_finished_spans() if s.name == "inference.first_prediction"]
    assert first.parent is not None
    assert first.parent.span_id == swap.get_span_context().span_id
    assert [link.context.span_id for link in first.links] == [request.get_span_context().span_id]
    assert first.attributes is not None
    assert first.attributes["rpc.method"] == "ModelInfer"
    assert first.attributes["driftloop.model_version"] == 5


class Aborted(Exception):
    pass


class Context:
    def __init__(self) -> None:
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)
        raise Aborted


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ModelNotFound("m"), grpc.StatusCode.NOT_FOUND),
        (ModelUnavailable("m"), grpc.StatusCode.UNAVAILABLE),
        (InvalidInput("m"), grpc.StatusCode.INVALID_ARGUMENT),
        (InvalidTensor("m"), grpc.StatusCode.INVALID_ARGUMENT),
        (UnsupportedModel("m"), grpc.StatusCode.FAILED_PRECONDITION),
        (MissingFeatures("m", ["a"]), grpc.StatusCode.FAILED_PRECONDITION),
        (Overloaded("m"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (DeadlineExpired("m"), grpc.StatusCode.DEADLINE_EXCEEDED),
        (FeaturesUnavailable("m", code="UNAVAILABLE"), grpc.StatusCode.UNAVAILABLE),
    ],
)
async def test_each_domain_error_ends_the_call_with_its_status_and_message(
    error: InferenceError, code: grpc.StatusCode
) -> None:
    class Servicer:
        @grpc_errors
        async def Call(self, request: str, context: Any) -> str:
            raise error

    context = Context()
    with pytest.raises(Aborted):
        await Servicer().Call("request", context)
    assert context.aborted == (code, "m")
    assert status_code(error) == code
