"""Plays a scenario through a real Driftloop stack and records what the loop did.

The demo is an application like any other: it starts the stack the way
`driftloop up` does (the supervisor, in this process), waits until every
service is ready, then for each event, at a steady rate, calls
`Predictor/Predict` the way a payment system would before accepting a payment
(answered by the champion or, while it leads, an online learner), and writes
the event to `events.raw`; its label follows on the same topic after
a delay, as a chargeback would. A group-less consumer reads the loop's own
events (`drift.detected`, `training.requested`, `models.registered`,
`models.promoted`, `training.failed`) from the beginning. The run ends when the
version retrained after the drift serves and its accuracy has recovered, when
the stream is over, at the timeout, or on Ctrl-C; the stack is then stopped as
`driftloop up` stops it.

State lives in `DRIFTLOOP_HOME/demo/`, emptied at start: a demo always begins
with no model, so the first version is the loop's own bootstrap.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import shutil
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from driftloop.v1 import common_pb2, events_pb2, predictor_pb2, predictor_pb2_grpc
from driftloop_core.grpc.client import open_channel
from driftloop_core.kafka.consumer import tail
from driftloop_core.kafka.offsets import end_offsets
from driftloop_core.kafka.topics import Topics, kind_of_message
from driftloop_core.services import ServiceSpec, discover_services
from driftloop_core.settings import Settings
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Console

from driftloop_cli.demo.scenario import START_ALIGN_MS, DemoEvent, Scenario
from driftloop_cli.demo.timeline import (
    DriftSeen,
    FailureSeen,
    PromotionSeen,
    RolloutSeen,
    Served,
    Timeline,
    TrainingSeen,
    VersionSeen,
    accuracy,
    recovered,
)
from driftloop_cli.status import collect
from driftloop_cli.supervisor import Supervisor, pid_alive, read_state

REQUIRED_SERVICES = ("ingestion", "features", "inference", "drift", "trainer", "registry")
WATCHED_TOPICS = (
    Topics.DRIFT_DETECTED,
    Topics.TRAINING_REQUESTED,
    Topics.TRAINING_FAILED,
    Topics.MODELS_REGISTERED,
    Topics.MODELS_PROMOTED,
    Topics.MODELS_ROLLOUTS,
)
# Service knobs the demo sets unless the environment already does.
# - A run lasts minutes, so the drift service must not wait two minutes after
#   the bootstrap request before it may ask for a retrain.
# - On two busy cores, scikit-learn's OpenMP threads in the trainer fight every
#   other process: a search measured at 1.4 s alone took 30 s that way.
# The trainer refuses a training set under 300 rows: on a busy machine the
# offline log can trail the labels drift has counted, and a bootstrap model fitted
# on the few rows already there is weak and has noisy reference bins (PSI false
# alarms). The refusal is a TrainingFailed; drift asks again after its cooldown.
# Drift waits for 400 post-drift labels, leaving the log 100 rows of slack.
# The demo tells the batch loop's story (bootstrap, drift, retrain, hot swap), so
# the online arena is off unless the environment turns it on: its learners cost
# each Predict and each label a few milliseconds, which a 2-core machine running
# every service (and other tests) cannot spare at the demo's rate.
DEMO_SERVICE_ENV: dict[str, dict[str, str]] = {
    "drift": {"DRIFTLOOP_DRIFT_COOLDOWN_S": "10", "DRIFTLOOP_DRIFT_MIN_POST_DRIFT_ROWS": "400"},
    "inference": {"DRIFTLOOP_INFERENCE_ONLINE_LEARNERS": "[]"},
    "trainer": {"OMP_NUM_THREADS": "1", "DRIFTLOOP_TRAINER_MIN_ROWS": "300"},
}
# How long the stream keeps the stack after the last event, so the last labels
# reach the drift detectors before the run is judged.
DRAIN_S = 4.0
# The history must be counted by the feature store before the first scored
# event, or the first scored events would be served aggregates of a history
# still being applied. On a busy machine that takes tens of seconds.
HISTORY_TIMEOUT_S = 120.0
HISTORY_POLL_S = 1.0


class DemoError(RuntimeError):
    """The demo cannot run (stack already up, a service missing, not ready in time)."""


@dataclass(frozen=True)
class DemoOptions:
    rate: float = 40.0  # events per second
    label_delay_s: float = 2.0
    timeout_s: float = 170.0
    ready_timeout_s: float = 120.0
    # Rolling accuracy window (predictions).
    window: int = 200
    # Predictions the retrained version must have answered before it counts as recovered.
    recovery_window: int = 300
    # Recovered when the post-drift version is this close to the accuracy before the drift.
    recovery_margin: float = 0.03
    predict_timeout_s: float = 2.0
    model: str = "payments"


def demo_settings(settings: Settings) -> Settings:
    """The user's settings with state under `home/demo/`."""
    return settings.model_copy(update={"home": settings.home / "demo"})


def trace_id(traceparent: str | None) -> str | None:
    """The trace id of a W3C `traceparent` header (version-traceid-spanid-flags)."""
    if not traceparent:
        return None
    parts = traceparent.split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None


def _seconds(stamp: Timestamp) -> float:
    return stamp.seconds + stamp.nanos / 1e9


def _enum(name: str, prefix: str) -> str:
    return name.removeprefix(prefix).lower()


def record_from(topic: str, value: bytes, headers: dict[str, str]) -> object | None:
    """A lifecycle record as the timeline keeps it; None for another topic."""
    parent = trace_id(headers.get("traceparent"))
    if topic == Topics.DRIFT_DETECTED:
        drift = events_pb2.DriftDetected.FromString(value)
        return DriftSeen(
            drift_id=drift.drift_id,
            model_version=drift.model_version,
            kind=_enum(events_pb2.DriftKind.Name(drift.kind), "DRIFT_KIND_"),
            detector=drift.detector,
            feature=drift.feature,
            statistic=drift.statistic,
            threshold=drift.threshold,
            last_event_id=drift.last_event_id,
            detected_at=_seconds(drift.detected_at),
            trace_id=parent,
        )
    if topic == Topics.TRAINING_REQUESTED:
        request = events_pb2.TrainingRequested.FromString(value)
        return TrainingSeen(
            request_id=request.request_id,
            trigger=_enum(events_pb2.TrainingTrigger.Name(request.trigger), "TRAINING_TRIGGER_"),
            parent_drift_id=request.parent_drift_id,
            requested_at=_seconds(request.requested_at),
            reason=request.reason,
            trace_id=parent,
        )
    if topic == Topics.MODELS_REGISTERED:
        registered = events_pb2.ModelRegistered.FromString(value)
        return VersionSeen(
            version=registered.version,
            status=_enum(
                common_pb2.ModelVersionStatus.Name(registered.status), "MODEL_VERSION_STATUS_"
            ),
            reason=registered.reason,
            request_id=registered.request_id,
            metrics=dict(registered.metrics),
            registered_at=_seconds(registered.registered_at),
        )
    if topic == Topics.MODELS_PROMOTED:
        promoted = events_pb2.ModelPromoted.FromString(value)
        return PromotionSeen(
            to_version=promoted.to_version,
            from_version=promoted.from_version if promoted.HasField("from_version") else None,
            alias=promoted.alias,
            kind=_enum(events_pb2.PromotionKind.Name(promoted.kind), "PROMOTION_KIND_"),
            reason=promoted.reason,
            promoted_at=_seconds(promoted.promoted_at),
        )
    if topic == Topics.MODELS_ROLLOUTS:
        return rollout_record(value, headers.get("ce_type", ""))
    if topic == Topics.TRAINING_FAILED:
        failed = events_pb2.TrainingFailed.FromString(value)
        return FailureSeen(
            failed.request_id, failed.stage, failed.reason, _seconds(failed.failed_at)
        )
    return None


_ROLLOUT_STEPS = {
    kind_of_message("driftloop.v1.ModelRolloutStarted").ce_type: "started",
    kind_of_message("driftloop.v1.RolloutJudged").ce_type: "judged",
    kind_of_message("driftloop.v1.ModelRolloutEnded").ce_type: "ended",
}


def rollout_record(value: bytes, ce_type: str) -> RolloutSeen | None:
    """A rollout step as the timeline keeps it, by the record's event type."""
    step = _ROLLOUT_STEPS.get(ce_type)
    if step == "started":
        started = events_pb2.ModelRolloutStarted.FromString(value)
        return RolloutSeen(
            started.rollout_id,
            step,
            started.candidate_version,
            started.champion_version,
            "shadow",
            started.reason,
            _seconds(started.started_at),
            kind=_kind(started.kind),
        )
    if step == "judged":
        judged = events_pb2.RolloutJudged.FromString(value)
        verdict = _enum(events_pb2.RolloutVerdict.Name(judged.verdict), "ROLLOUT_VERDICT_")
        return RolloutSeen(
            judged.rollout_id,
            step,
            judged.candidate_version,
            judged.champion_version,
            verdict,
            judged.reason,
            _seconds(judged.judged_at),
            judged.figures.paired,
            judged.figures.champion_errors,
            judged.figures.candidate_errors,
        )
    if step == "ended":
        ended = events_pb2.ModelRolloutEnded.FromString(value)
        outcome = _enum(events_pb2.RolloutOutcome.Name(ended.outcome), "ROLLOUT_OUTCOME_")
        return RolloutSeen(
            ended.rollout_id,
            step,
            ended.candidate_version,
            ended.champion_version,
            outcome,
            ended.reason,
            _seconds(ended.ended_at),
            ended.figures.paired,
            ended.figures.champion_errors,
            ended.figures.candidate_errors,
            kind=_kind(ended.kind),
        )
    return None


def _kind(kind: int) -> str:
    return "watch" if kind == events_pb2.ROLLOUT_KIND_WATCH else "trial"


def add_record(timeline: Timeline, record: object) -> None:
    if isinstance(record, DriftSeen):
        timeline.drifts.append(record)
    elif isinstance(record, TrainingSeen):
        timeline.trainings.append(record)
    elif isinstance(record, VersionSeen):
        timeline.versions.append(record)
    elif isinstance(record, PromotionSeen):
        timeline.promotions.append(record)
    elif isinstance(record, FailureSeen):
        timeline.failures.append(record)
    elif isinstance(record, RolloutSeen):
        timeline.rollouts.append(record)


async def start_producer(settings: Settings, suffix: str) -> AIOKafkaProducer:
    """A started producer for raw events and labels, as an application's."""
    kafka = settings.kafka
    producer = AIOKafkaProducer(
        **kafka.client_options(),
        client_id=f"{kafka.client_id_prefix}-{suffix}",
        acks=-1,
        linger_ms=2,
    )
    await producer.start()
    return producer


async def follow(consumer: Any, seen: Callable[[object | None], None]) -> None:
    """Every lifecycle record `consumer` reads, as `record_from` makes it, to `seen`."""
    while True:
        batches = await consumer.getmany(timeout_ms=250)
        for tp, messages in batches.items():
            for message in messages:
                headers = {
                    key: value.decode(errors="replace") for key, value in message.headers or ()
                }
                seen(record_from(tp.topic, message.value or b"", headers))


async def call_predict(
    stub: predictor_pb2_grpc.PredictorAsyncStub,
    request: predictor_pb2.PredictRequest,
    index: int,
    truth: int,
    timeout_s: float,
    *,
    champion_at: Callable[[float], int | None] | None = None,
) -> tuple[Served, predictor_pb2.PredictResponse | None]:
    """The answer to one Predict call as the timeline keeps it (UNAVAILABLE is
    "no model yet"), and the reply when there is one.

    When an online learner answered (the reply's `learner`, model_version 0),
    the answer is the learner's and its version is the champion in effect at
    that moment, by `champion_at` (None without it, or before the first)."""
    try:
        reply: predictor_pb2.PredictResponse = await stub.Predict(request, timeout=timeout_s)
    except grpc.aio.AioRpcError as error:
        code = error.code()
        status = "no_model" if code == grpc.StatusCode.UNAVAILABLE else code.name.lower()
        return Served(index, time.time(), truth, status), None
    at = time.time()
    if reply.learner:
        version = champion_at(at) if champion_at is not None else None
        served = Served(index, at, truth, "ok", version, int(reply.label), learner=reply.learner)
    else:
        served = Served(index, at, truth, "ok", reply.model_version, int(reply.label))
    return served, reply


def predict_request(event: DemoEvent, start_ms: int, model: str) -> predictor_pb2.PredictRequest:
    """What the payment system asks: this customer, this payment, now."""
    request = predictor_pb2.PredictRequest(
        model=model, event_id=event.event_id, entity_id=event.customer_id
    )
    request.features["amount"].float_value = event.amount
    request.features["channel"].string_value = event.channel
    request.features["hour"].int_value = event.hour
    request.event_time.FromMilliseconds(start_ms + event.offset_ms)
    return request


def skewed(event: DemoEvent, reply: predictor_pb2.PredictResponse) -> bool:
    """Whether the aggregates Predict used differ from the scenario's point-in-time ones."""
    used = reply.features_used
    count = used.get("txn_count_10m")
    mean = used.get("amount_mean_1h")
    kind = None if count is None else count.WhichOneof("kind")
    number = None if count is None or kind is None else getattr(count, kind)
    if not isinstance(number, int | float) or math.isnan(number):
        # Not there, or its default: no feature-store value was used.
        return event.txn_count_10m != 0
    if int(number) != event.txn_count_10m:
        return True
    seen = mean.float_value if mean is not None and mean.WhichOneof("kind") else math.nan
    if event.amount_mean_1h is None:
        return not math.isnan(seen)
    return math.isnan(seen) or abs(seen - event.amount_mean_1h) > 1e-3 * max(1.0, seen)


class Announcer:
    """The live view's lines for the loop's events, in the loop's order.

    The watcher reads several topics at once, so a version's promotion
    (`models.promoted`) can arrive before its registration
    (`models.registered`), though the registry registers first. A promotion of
    a version not announced yet waits for its registration, at most
    `hold_s`, so the view never says "v2 promoted" before "v2 registered"."""

    def __init__(self, say: Callable[[str], None], hold_s: float = 5.0) -> None:
        self._say = say
        self._hold_s = hold_s
        self._registered: set[int] = set()
        self._held: list[tuple[float, PromotionSeen]] = []

    def announce(self, record: Any, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if isinstance(record, DriftSeen):
            what = record.feature or "error rate"
            self._say(f"drift detected on v{record.model_version}: {record.detector} ({what})")
        elif isinstance(record, TrainingSeen):
            self._say(f"training requested ({record.trigger})")
        elif isinstance(record, VersionSeen):
            auc = record.metrics.get("roc_auc")
            score = f", roc_auc {auc:.3f}" if auc is not None else ""
            self._say(f"v{record.version} registered as {record.status}{score}")
            self._registered.add(record.version)
        elif isinstance(record, PromotionSeen):
            if record.to_version in self._registered:
                self._promoted(record)
            else:
                self._held.append((now, record))
        elif isinstance(record, FailureSeen):
            self._say(f"training failed at {record.stage}: {record.reason}")
        elif isinstance(record, RolloutSeen):
            self._rollout(record)
        self._release(now)

    def _rollout(self, record: RolloutSeen) -> None:
        candidate, champion = record.candidate_version, record.champion_version
        if record.step == "started" and record.kind == "watch":
            self._say(f"previous champion v{candidate} watches v{champion} in shadow")
        elif record.step == "started":
            self._say(f"v{candidate} in shadow beside champion v{champion}")
        elif record.step == "judged":
            self._say(
                f"rollout of v{candidate} judged {record.outcome} on {record.paired} paired "
                f"labelled events ({record.candidate_errors} vs {record.champion_errors} errors)"
            )
        elif record.kind == "watch":
            self._say(f"watch of v{champion} ended: {record.outcome.replace('_', ' ')}")
        elif record.outcome != "promoted":  # a promotion is announced as such
            self._say(f"rollout of v{candidate} {record.outcome}")

    def _release(self, now: float) -> None:
        still: list[tuple[float, PromotionSeen]] = []
        for since, promotion in self._held:
            if promotion.to_version in self._registered or now - since >= self._hold_s:
                self._promoted(promotion)
            else:
                still.append((since, promotion))
        self._held = still

    def _promoted(self, promotion: PromotionSeen) -> None:
        self._say(f"v{promotion.to_version} promoted to {promotion.alias}")


class DemoRun:
    """One run: the stack, the stream, the watcher and the stop rule."""

    def __init__(
        self,
        settings: Settings,
        scenario: Scenario,
        options: DemoOptions,
        *,
        log_path: Path,
        timeline: Timeline | None = None,
        on_change: Callable[[str], None] | None = None,
        services: list[ServiceSpec] | None = None,
    ) -> None:
        self.settings = settings
        self.scenario = scenario
        self.options = options
        self.timeline = timeline if timeline is not None else Timeline()
        self.phase = "starting the stack"
        self._log_path = log_path
        self._say = on_change or (lambda _message: None)
        self._announcer = Announcer(self._say)
        self._services = services
        self._stop = asyncio.Event()

    # ---------------------------------------------------------------- the run

    async def run(self) -> Timeline:
        self._check_free()
        shutil.rmtree(self.settings.home, ignore_errors=True)
        self.settings.home.mkdir(parents=True, exist_ok=True)
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        with self._log_path.open("w") as log:
            supervisor = Supervisor(
                self.settings,
                self._specs(),
                console=Console(file=log, highlight=False, soft_wrap=True, width=200),
            )
            stack = asyncio.create_task(supervisor.run())
            self.timeline.started_at = time.time()
            try:
                await self._wait_ready(stack)
                await self._play(stack)
            except asyncio.CancelledError:
                self.timeline.outcome = "interrupted"
                raise
            finally:
                self.timeline.finished_at = time.time()
                self.phase = "stopping the stack"
                self._say("stopping the stack")
                supervisor.stop()
                with contextlib.suppress(Exception):
                    await stack
        return self.timeline

    def _check_free(self) -> None:
        state = read_state(self.settings)
        if state and pid_alive(state.get("supervisor_pid")):
            raise DemoError(
                f"a demo stack is already running in {self.settings.home} "
                f"(pid {state['supervisor_pid']})"
            )

    def _specs(self) -> list[ServiceSpec]:
        specs = self._services if self._services is not None else discover_services()
        missing = sorted(set(REQUIRED_SERVICES) - {spec.name for spec in specs})
        if missing:
            raise DemoError(f"services not installed: {', '.join(missing)} (run `make venv`)")
        out = []
        for spec in specs:
            extra = {
                key: value
                for key, value in DEMO_SERVICE_ENV.get(spec.name, {}).items()
                if key not in os.environ
            }
            out.append(replace(spec, env={**spec.env, **extra}) if extra else spec)
        return out

    async def _wait_ready(self, stack: asyncio.Task[int]) -> None:
        self.phase = "waiting for every service"
        deadline = time.monotonic() + self.options.ready_timeout_s
        while time.monotonic() < deadline:
            if stack.done():
                error = stack.exception()
                raise DemoError(
                    f"the stack stopped before it was ready ({error or 'exit'}); "
                    f"see {self._log_path}"
                )
            statuses = await collect(self.settings)
            if len(statuses) > 1 and all(s.ready for s in statuses):
                self._say("every service is ready")
                return
            await asyncio.sleep(0.5)
        raise DemoError(
            f"the stack was not ready within {self.options.ready_timeout_s:g}s; "
            f"see {self._log_path}"
        )

    async def _play(self, stack: asyncio.Task[int]) -> None:
        producer = await start_producer(self.settings, "demo")
        watcher = await self._watcher()
        channel = open_channel(self.settings.endpoints.inference, self.settings)
        tasks: list[asyncio.Task[None]] = []
        try:
            stub = predictor_pb2_grpc.PredictorStub(channel)
            labels: deque[tuple[float, DemoEvent]] = deque()
            tasks = [
                asyncio.create_task(self._watch(watcher)),
                asyncio.create_task(self._label(producer, labels)),
            ]
            stream = asyncio.create_task(self._stream(stub, producer, labels))
            timeout = asyncio.create_task(asyncio.sleep(self.options.timeout_s))
            stopped = asyncio.create_task(self._stop.wait())
            done, _ = await asyncio.wait(
                [stream, timeout, stopped, stack], return_when=asyncio.FIRST_COMPLETED
            )
            for task in (stream, timeout, stopped):
                task.cancel()
            await asyncio.gather(stream, timeout, stopped, return_exceptions=True)
            if stream in done and stream.exception() is not None:
                raise stream.exception()  # type: ignore[misc]
            if stack in done:
                self.timeline.outcome = "interrupted"
            elif timeout in done:
                self.timeline.outcome = "timeout"
            if self.timeline.outcome in ("running", "completed"):
                self.timeline.outcome = "completed"
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await channel.close()
            await watcher.stop()
            await producer.stop()

    # ---------------------------------------------------------------- parts

    async def _stream(
        self,
        stub: predictor_pb2_grpc.PredictorAsyncStub,
        producer: AIOKafkaProducer,
        labels: deque[tuple[float, DemoEvent]],
    ) -> None:
        """Send the history, then score and send each event on schedule; stop once recovered."""
        loop = asyncio.get_running_loop()
        start_ms = int(time.time() * 1000) - self.scenario.span_ms
        start_ms -= start_ms % START_ALIGN_MS
        self.phase = "sending an hour of history"
        for past in self.scenario.history:
            await producer.send(
                Topics.RAW,
                json.dumps(past.observation(start_ms)).encode(),
                key=past.customer_id.encode(),
            )
        await producer.flush()
        self._say(f"{len(self.scenario.history)} past payments sent")
        await self._history_counted()
        self._say("the feature store has counted them; scoring starts")
        self.phase = "streaming"
        began = loop.time()
        onset = self.scenario.onset
        for event in self.scenario:
            delay = began + event.index / self.options.rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            served = await self._predict(stub, event, start_ms)
            self.timeline.served.append(served)
            await producer.send(
                Topics.RAW,
                json.dumps(event.observation(start_ms)).encode(),
                key=event.customer_id.encode(),
            )
            now = time.time()
            self.timeline.sent[event.index] = now
            labels.append((now + self.options.label_delay_s, event))
            if event.index == onset:
                self._say(f"the fraud pattern changes now (event {onset})")
            if event.index % 25 == 0 and self._recovered():
                self.timeline.outcome = "recovered"
                self._say("accuracy recovered on the retrained version")
                return
        self.phase = "draining the last labels"
        await asyncio.sleep(self.options.label_delay_s + DRAIN_S)
        self.timeline.outcome = "recovered" if self._recovered() else "completed"

    async def _history_counted(self) -> None:
        """Wait until the feature store has logged a row for every past payment.

        The demo starts on empty topics and the history carries no label, so the
        rows on `features.offline` are the history's, one per payment."""
        self.phase = "waiting for the feature store to count the history"
        wanted = len(self.scenario.history)
        kafka = self.settings.kafka
        probe = AIOKafkaConsumer(**kafka.client_options(), enable_auto_commit=False)
        await probe.start()
        try:
            await probe.topics()  # the metadata partitions_for_topic reads
            partitions = [
                TopicPartition(Topics.FEATURES_OFFLINE, p)
                for p in sorted(probe.partitions_for_topic(Topics.FEATURES_OFFLINE) or ())
            ]
            deadline = time.monotonic() + HISTORY_TIMEOUT_S
            while True:
                counted = sum((await end_offsets(kafka, probe, partitions)).values())
                if counted >= wanted:
                    return
                if time.monotonic() > deadline:
                    raise DemoError(
                        f"the feature store counted {counted} of {wanted} past payments "
                        f"in {HISTORY_TIMEOUT_S:g}s; see {self._log_path}"
                    )
                await asyncio.sleep(HISTORY_POLL_S)
        finally:
            await probe.stop()

    def _recovered(self) -> bool:
        onset = self.scenario.onset
        if onset is None:
            return False
        before = accuracy(s for s in self.timeline.served if s.index < onset)
        target = 0.9 if before is None else before - self.options.recovery_margin
        return recovered(self.timeline, onset, self.options.recovery_window, target)

    async def _predict(
        self, stub: predictor_pb2_grpc.PredictorAsyncStub, event: DemoEvent, start_ms: int
    ) -> Served:
        request = predict_request(event, start_ms, self.options.model)
        served, reply = await call_predict(
            stub,
            request,
            event.index,
            event.is_fraud,
            self.options.predict_timeout_s,
            champion_at=self.timeline.champion_at,
        )
        return served if reply is None else replace(served, skewed=skewed(event, reply))

    async def _label(
        self, producer: AIOKafkaProducer, labels: deque[tuple[float, DemoEvent]]
    ) -> None:
        """Send each label once its delay has passed."""
        while True:
            while labels and labels[0][0] <= time.time():
                _, event = labels.popleft()
                await producer.send(
                    Topics.RAW,
                    json.dumps(event.label()).encode(),
                    key=event.customer_id.encode(),
                )
                self.timeline.labels_sent += 1
            await asyncio.sleep(0.05)

    async def _watcher(self) -> Any:
        return await tail(self.settings, WATCHED_TOPICS, from_end=False, client_suffix="demo-watch")

    async def _watch(self, consumer: Any) -> None:
        def seen(record: object | None) -> None:
            add_record(self.timeline, record)
            self._announce(record)

        await follow(consumer, seen)

    def _announce(self, record: Any) -> None:
        self._announcer.announce(record)

    def stop(self) -> None:
        """End the stream now; the run then stops the stack and returns."""
        self._stop.set()
