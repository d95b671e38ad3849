"""The inference data plane: every call the service answers, whatever carries it.

The gRPC servicers (Open Inference Protocol and `driftloop.v1.Predictor`) only
convert their requests, call a method here and convert the answer back. Refusals
are the domain errors of `errors.py`; each entrypoint maps them to its status
codes once. Nothing here knows gRPC, and nothing here knows which runtime a
model runs on.

`predict` fills a model's inputs (one `[-1, 1]` tensor per feature, named after
it) from the request's own features first, then from the entity's online
features, looked up as of the event time within the caller's deadline. What is
still missing takes its configured default (NaN / "" by default, as the trainer
encodes a missing value) or, with the `fail` policy, is refused as
MissingFeatures naming the features. When the lookup itself fails the call is
refused as FeaturesUnavailable, or, with `on_lookup_failure=defaults`, goes on
as if the entity had no online features. The prediction is offered to the
predictions buffer, which never blocks the call.

With the online arena on (`online/`), Predict asks it who answers. When an
online learner leads, it answers on the same features, the champion (when one
is loaded) still runs and its answer is published beside it as the shadow
drift watches, and the Prediction says `model_version` 0 and the learner's
name. Before any version is loaded the learner answers on the feature set's
features, so a fresh deployment answers from its first event. A request that
names a version or the alias gets that version's answer, as without the arena.

While a rollout is open and its candidate loaded (`rollouts.py`), a Predict a
registered version answered also hands back, in its Decision, a job to run
once the reply is sent (`after_reply`): the candidate's shadow answer on the
same inputs (`shadow.py`). The caller's answer and latency are the same with
or without it; ModelInfer is never shadowed.

What a request may carry is bounded here, whatever carries it: an id (event,
entity, model name, version, alias, request id) at most `MAX_ID_BYTES` of
UTF-8; a ModelInfer at most `max_request_rows` rows and `max_request_bytes`
of tensor data (checked before its values are read, `codec.py`), and a large
one (more than `OFFLOAD_BYTES`) runs whole in the batcher's large-request
thread (`offload`), at most `large_queue_capacity` of them admitted. Predict
refuses a feature value that is not a finite number of its input's type, and a
model answer whose probability is not (`predict.py`). A Prediction never
carries a feature value that is not finite: a default that is NaN (the
trainer's missing value) is published without a value, named in
`defaults_applied`.

The data plane also closes the retrain loop's trace: a version swapped in under
a promotion's span keeps that span's context until the first request it answers,
which ends the trace with a span linked to the request's own.
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, TypeVar

from driftloop.v1 import common_pb2, events_pb2
from driftloop_core.ids import MAX_ID_BYTES, oversized
from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry import trace

from driftloop_inference.batching import Batcher
from driftloop_inference.errors import (
    DeadlineExpired,
    FeaturesUnavailable,
    InvalidInput,
    MissingFeatures,
    ModelNotFound,
    ModelUnavailable,
    Overloaded,
)
from driftloop_inference.metrics import FEATURE_LOOKUP_FAILURES, REJECTED
from driftloop_inference.model import Array, ServedModel, TensorSpec
from driftloop_inference.online.host import ArenaHost, learner_inputs
from driftloop_inference.predict import check_signature, decide, feature_inputs, feature_values
from driftloop_inference.repository import ModelRepository

if TYPE_CHECKING:  # the settings module pulls in the Kafka layer for its topic names
    from driftloop_inference.config import InferenceSettings

_tracer = trace.get_tracer("driftloop.inference")
SERVED_ALIAS = "champion"
Result = TypeVar("Result")
# The most UTF-8 bytes of any id a request carries (ids become Kafka keys and
# are echoed in answers and errors).
# A ModelInfer larger than this runs off the event loop: decoding 16 KiB of
# short BYTES elements takes about half a millisecond, as long as a one-row call.
OFFLOAD_BYTES = 16 * 1024


def check_id(name: str, value: str) -> None:
    """Raise InvalidInput when the id `name` has more than MAX_ID_BYTES of UTF-8."""
    size = oversized(value)
    if size is not None:
        raise InvalidInput(
            f"{name}: {size} bytes; an id may have at most {MAX_ID_BYTES} bytes (UTF-8)",
            field=name,
            rule=f"at most {MAX_ID_BYTES} bytes",
        )


@dataclass(frozen=True)
class RequestLimits:
    """How much one ModelInfer may carry, and from what size it runs off the
    event loop (`DataPlane.offload`)."""

    max_rows: int
    max_bytes: int
    offload_bytes: int = OFFLOAD_BYTES


class OnlineFeatures(Protocol):
    """The feature store's online lookup (adapters/features.py)."""

    @property
    def target(self) -> str: ...

    async def online(
        self, entity_id: str, names: list[str], as_of: Timestamp | None, timeout_s: float | None
    ) -> Mapping[str, common_pb2.FeatureValue]:
        """The entity's present values; raises FeaturesUnavailable."""
        ...


class PredictionOutbox(Protocol):
    """Where predictions go without making the call wait (adapters/predictions.py)."""

    def offer(self, prediction: events_pb2.Prediction) -> None: ...


# What runs once the reply is sent; it may only schedule work, never block.
AfterReply = Callable[[], None]


@dataclass(frozen=True)
class PredictRequest:
    """One event to decide on. `version` ("" for the served one) or `alias`."""

    event_id: str = ""
    entity_id: str = ""
    model: str = ""
    version: str = ""
    alias: str = ""
    features: Mapping[str, common_pb2.FeatureValue] = field(default_factory=dict)
    event_time: Timestamp | None = None


@dataclass(frozen=True)
class Decision:
    """The answer to a PredictRequest, as published in its Prediction."""

    model: str
    model_version: int
    label: int
    probability: float
    features_used: dict[str, common_pb2.FeatureValue]
    defaults_applied: list[str]
    # "" when a registered version answered (`model_version`), else the online
    # learner that did ("online:<name>"; `model_version` is 0 then).
    learner: str = ""
    # For the entrypoint to run once the reply is sent (a rollout candidate's
    # shadow scoring), so that the caller never waits for it; None: nothing.
    after_reply: AfterReply | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class VersionAnswer:
    """What a registered version answered for a Predict, and what it was fed."""

    feeds: dict[str, Array]
    used: dict[str, common_pb2.FeatureValue]
    missing: list[str]
    label: int
    probability: float
    # The entity's online features the inputs were filled from ({} when the
    # request carried every input): a shadow reuses them, without a second lookup.
    online: Mapping[str, common_pb2.FeatureValue]


class ShadowScoring(Protocol):
    """A rollout candidate scored beside the champion (shadow.py)."""

    def after_reply(
        self, champion: ServedModel, request: PredictRequest, answer: VersionAnswer
    ) -> AfterReply | None:
        """The shadow job for this answer, or None when no candidate is loaded."""
        ...


@dataclass(frozen=True)
class ModelState:
    """One entry of the repository index."""

    name: str
    version: str
    state: str
    reason: str = ""


class DataPlane:
    def __init__(
        self,
        repository: ModelRepository,
        batcher: Batcher,
        features: OnlineFeatures | None,
        outbox: PredictionOutbox,
        config: InferenceSettings,
        arena: ArenaHost | None = None,
        featureset_inputs: tuple[TensorSpec, ...] = (),
        shadow: ShadowScoring | None = None,
    ) -> None:
        self._repository = repository
        self._batcher = batcher
        self._features = features
        self._outbox = outbox
        self._config = config
        # The online learners beside the champion (None: the champion only), and
        # the inputs Predict fills for them while no version is loaded.
        self._arena = arena
        self._featureset_inputs = featureset_inputs
        # A rollout candidate's shadow answers (None: rollouts are not followed).
        self._shadow = shadow
        # Versions swapped in under a span, until their first answer ends it.
        self._swaps: weakref.WeakKeyDictionary[ServedModel, trace.SpanContext] = (
            weakref.WeakKeyDictionary()
        )
        # Registered first, so the swap is noted before any listener awaits.
        repository.on_change(self._swapped)
        self.limits = RequestLimits(config.max_request_rows, config.max_request_bytes)
        self._large = 0  # large requests admitted (`offload`), running or waiting

    @property
    def ready(self) -> bool:
        return self._repository.ready

    def model(self, name: str, version: str) -> ServedModel:
        """The version a request names ("" the served one); ModelNotFound or
        ModelUnavailable otherwise."""
        check_id("model_name", name)
        check_id("model_version", version)
        return self._repository.resolve(name, version)

    def model_ready(self, name: str, version: str) -> bool:
        try:
            self._repository.resolve(name, version)
        except (ModelNotFound, ModelUnavailable):
            return False
        return True

    def loaded(self) -> list[ServedModel]:
        return self._repository.loaded()

    def index(self, ready_only: bool) -> list[ModelState]:
        """The loaded versions; with none, the model and why (unless `ready_only`)."""
        loaded = self._repository.loaded()
        states = [ModelState(model.name, model.version_str, "READY") for model in loaded]
        if not loaded and not ready_only:
            repository = self._repository
            reason = repository.last_error or "no version loaded yet"
            states.append(ModelState(repository.name, "", "UNAVAILABLE", reason))
        return states

    async def infer(
        self,
        model: ServedModel,
        feeds: dict[str, Array],
        timeout_s: float | None,
        method: str = "ModelInfer",
    ) -> list[Array]:
        """Every output of `model` for `feeds` (already checked against its inputs),
        within `timeout_s` seconds. `method` names the call in the trace."""
        rows = _rows(model, feeds)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        outputs = await self._run(model, feeds, rows, deadline)
        self._served(model, method)
        return outputs

    async def offload(
        self,
        model: ServedModel,
        job: Callable[[], Result],
        timeout_s: float | None,
        method: str = "ModelInfer",
    ) -> Result:
        """A large request's whole work, `job` (blocking: decode, `run_now`,
        encode), in the batcher's large-request thread after those before it,
        within `timeout_s` seconds. Beyond `large_queue_capacity` admitted,
        Overloaded at once."""
        capacity = self._config.large_queue_capacity
        if self._large >= capacity:
            REJECTED.labels("large_queue_full").inc()
            raise Overloaded(
                f"large requests queue full ({capacity} waiting, "
                "DRIFTLOOP_INFERENCE_LARGE_QUEUE_CAPACITY); retry later or send fewer rows"
            )
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self._large += 1
        try:
            result = await self._batcher.offload(job, deadline)
        finally:
            self._large -= 1
        self._served(model, method)
        return result

    def run_now(self, model: ServedModel, feeds: dict[str, Array]) -> list[Array]:
        """Blocking, in `offload`'s job: every output of `model` for `feeds`."""
        _rows(model, feeds)
        return model.run(feeds)

    async def predict(self, request: PredictRequest, timeout_s: float | None) -> Decision:
        """The decision on one event, by the champion or the arena's online
        learner, published as a Prediction."""
        received = time.perf_counter()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        check_id("event_id", request.event_id)
        check_id("entity_id", request.entity_id)
        check_id("model", request.model)
        check_id("alias", request.alias)
        if request.alias not in ("", SERVED_ALIAS):
            raise ModelNotFound(
                f"alias '{request.alias}' is not served; only '{SERVED_ALIAS}' "
                "(the current version)"
            )
        arena = self._arena
        if arena is None or request.version or request.alias:
            # A registered version was asked for by name: it answers.
            model = self._repository.resolve(request.model, request.version)
            return await self._by_version(model, request, received, deadline)
        served = self._repository.served(request.model)
        expected = self._repository.expected
        if served is None and expected is not None and not arena.arena.learnt:
            # A restarted replica whose champion is still loading: its fresh
            # learners know nothing yet, so it answers as without the arena.
            raise ModelUnavailable(
                f"model '{self._repository.name}' v{expected} is being loaded and the "
                "online learners have learnt no label yet"
            )
        learner = arena.leader(None if served is None else served.version)
        if learner:
            decision = await self._by_learner(learner, served, request, received, deadline)
        elif served is None:  # no learner and no version: only with an empty arena
            raise ModelUnavailable(f"model '{self._repository.name}' is not loaded yet")
        else:
            decision = await self._by_version(served, request, received, deadline)
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attribute("driftloop.learner", decision.learner)
        return decision

    async def _by_version(
        self,
        model: ServedModel,
        request: PredictRequest,
        received: float,
        deadline: float | None,
    ) -> Decision:
        answer = await self._run_version(model, request, deadline)
        prediction = new_prediction(request, model.name, answer.used, answer.missing)
        prediction.model_version = model.version
        prediction.label = answer.label
        prediction.probability = answer.probability
        self._publish(prediction, request, received)
        return Decision(
            model.name,
            model.version,
            answer.label,
            answer.probability,
            answer.used,
            answer.missing,
            after_reply=self._shadow_job(model, request, answer),
        )

    async def _by_learner(
        self,
        learner: str,
        model: ServedModel | None,
        request: PredictRequest,
        received: float,
        deadline: float | None,
    ) -> Decision:
        """The online learner answers; the champion, when one is loaded, still
        runs on the same features and its answer goes out as the shadow (and a
        rollout candidate's after the reply, on the champion's inputs)."""
        assert self._arena is not None
        shadow: events_pb2.ShadowAnswer | None = None
        after_reply: AfterReply | None = None
        if model is None:
            used, missing = await self._featureset_values(request, deadline)
        else:
            ran = await self._run_version(model, request, deadline)
            used, missing = ran.used, ran.missing
            shadow = events_pb2.ShadowAnswer(
                model_version=model.version, label=ran.label, probability=ran.probability
            )
            after_reply = self._shadow_job(model, request, ran)
        answer = self._arena.answer(learner, learner_inputs(used, missing))
        name = self._repository.name
        prediction = new_prediction(request, name, used, missing)
        prediction.learner = answer.learner
        prediction.label = answer.label
        prediction.probability = answer.probability
        if shadow is not None:
            prediction.champion.CopyFrom(shadow)
        self._publish(prediction, request, received)
        return Decision(
            name,
            0,
            answer.label,
            answer.probability,
            used,
            missing,
            learner=answer.learner,
            after_reply=after_reply,
        )

    def _shadow_job(
        self, model: ServedModel, request: PredictRequest, answer: VersionAnswer
    ) -> AfterReply | None:
        if self._shadow is None:
            return None
        return self._shadow.after_reply(model, request, answer)

    async def _run_version(
        self, model: ServedModel, request: PredictRequest, deadline: float | None
    ) -> VersionAnswer:
        """`model`'s inputs filled for the request, and its label and probability."""
        check_signature(model)
        given = request.features
        needs_lookup = any(spec.name not in given for spec in model.inputs)
        online = await self._online(request, deadline) if needs_lookup else {}
        feeds, used, missing = feature_inputs(model, given, online, self._config.feature_defaults)
        self._check_missing(request, missing)
        outputs = await self._run(model, feeds, 1, deadline)
        self._served(model, "Predict")
        label, probability = decide(model, outputs)
        return VersionAnswer(feeds, used, missing, label, probability, online)

    async def _featureset_values(
        self, request: PredictRequest, deadline: float | None
    ) -> tuple[dict[str, common_pb2.FeatureValue], list[str]]:
        """With no version loaded: the feature set's features, filled as a
        model's inputs would be."""
        given = request.features
        specs = self._featureset_inputs
        needs_lookup = any(spec.name not in given for spec in specs)
        online = await self._online(request, deadline) if needs_lookup else {}
        _, used, missing = feature_values(specs, given, online, self._config.feature_defaults)
        self._check_missing(request, missing)
        return used, missing

    def _check_missing(self, request: PredictRequest, missing: list[str]) -> None:
        if missing and self._config.missing_features == "fail":
            raise MissingFeatures(
                f"missing features for entity '{request.entity_id}': {', '.join(missing)} "
                "(neither in the request nor in the feature store)",
                missing,
            )

    def _publish(
        self, prediction: events_pb2.Prediction, request: PredictRequest, received: float
    ) -> None:
        stamp_prediction(prediction, request, time.perf_counter() - received)
        self._outbox.offer(prediction)

    async def _online(
        self, request: PredictRequest, deadline: float | None
    ) -> Mapping[str, common_pb2.FeatureValue]:
        features = self._features
        if features is None or not request.entity_id:
            return {}
        remaining = None if deadline is None else deadline - time.monotonic()
        try:
            return await features.online(request.entity_id, [], request.event_time, remaining)
        except FeaturesUnavailable as error:
            FEATURE_LOOKUP_FAILURES.labels(error.code).inc()
            if self._config.on_lookup_failure == "defaults":
                span = trace.get_current_span()
                if span.is_recording():
                    span.set_attribute("driftloop.feature_lookup_failed", error.code)
                return {}
            raise FeaturesUnavailable(
                f"online features of entity '{request.entity_id}' from the feature store at "
                f"{features.target}: {error}",
                code=error.code,
            ) from error

    async def _run(
        self, model: ServedModel, feeds: dict[str, Array], rows: int, deadline: float | None
    ) -> list[Array]:
        if deadline is not None and deadline <= time.monotonic():
            raise DeadlineExpired("deadline exceeded")
        return await self._batcher.infer(model, feeds, rows, deadline)

    async def _swapped(self, model: ServedModel) -> None:
        swap = trace.get_current_span().get_span_context()
        if swap.is_valid:
            self._swaps[model] = swap
        else:
            self._swaps.pop(model, None)

    def _served(self, model: ServedModel, method: str) -> None:
        """After a request `model` answered: the first one since its swap ends the
        retrain loop's trace with a span, linked to the request's own trace."""
        if not self._swaps:
            return
        swap = self._swaps.pop(model, None)
        if swap is None:
            return
        link = trace.Link(trace.get_current_span().get_span_context())
        parent = trace.set_span_in_context(trace.NonRecordingSpan(swap))
        _tracer.start_span(
            "inference.first_prediction",
            context=parent,
            links=[link],
            attributes={
                "driftloop.model": model.name,
                "driftloop.model_version": model.version,
                "rpc.method": method,
            },
        ).end()


def new_prediction(
    request: PredictRequest,
    model: str,
    used: dict[str, common_pb2.FeatureValue],
    missing: list[str],
) -> events_pb2.Prediction:
    """The Prediction of `request` by `model` on the features `used`, those in
    `missing` having taken a default; the answer is the caller's to set."""
    prediction = events_pb2.Prediction(
        event_id=request.event_id,
        entity_id=request.entity_id,
        model=model,
        defaults_applied=missing,
    )
    features = prediction.features
    for name, value in used.items():
        if value.WhichOneof("kind") == "float_value" and not math.isfinite(value.float_value):
            # Only a default can be here (request values are refused, online ones
            # taken as missing): published without a value, as missing.
            features[name].SetInParent()
        else:
            features[name].CopyFrom(value)
    return prediction


def stamp_prediction(
    prediction: events_pb2.Prediction, request: PredictRequest, latency_s: float
) -> None:
    """The request's event time, when it was predicted, and how long it took."""
    prediction.latency.FromNanoseconds(int(latency_s * 1e9))
    if request.event_time is not None:
        prediction.event_time.CopyFrom(request.event_time)
    prediction.predicted_at.GetCurrentTime()


def _rows(model: ServedModel, feeds: dict[str, Array]) -> int:
    """The batch dimension every input shares (1 for a model that does not batch)."""
    if not model.batchable or not model.inputs:
        return 1
    first = model.inputs[0].name
    rows = int(feeds[first].shape[0])
    for spec in model.inputs[1:]:
        got = int(feeds[spec.name].shape[0])
        if got != rows:
            raise InvalidInput(
                f"input '{spec.name}': expected batch dimension {rows} (as input "
                f"'{first}'), got {got}",
                field=spec.name,
                rule="batch dimension",
            )
    return rows
