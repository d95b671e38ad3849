"""Faults survived by the whole stack: one `driftloop up`, faults one after another.

The promises of the design notes, checked where a user would notice them: no
acknowledged event lost or counted twice (the feature store's online counts
and means against the truth computed from the acknowledged events), every
label counted once by drift, one model version per training request,
inference answering with its loaded model while its dependencies are down,
bad records dead-lettered with their origin while the partition moves on, and
replays that change nothing.

The stream is seeded: labelled card payments of twelve customers, event ids
`f-<n>`, event times in the last few minutes so every aggregate window holds
all of them. Each test records its figures (see conftest.py and `make faults`);
the assertions are outcomes and generous deadlines, never speed targets.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import grpc.aio
import pytest
from driftloop.v1 import (
    events_pb2,
    registry_pb2,
    registry_pb2_grpc,
)
from driftloop_core.kafka import Topics
from driftloop_core.kafka.headers import make_headers
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.faults import (
    CLIENT_OPTIONS,
    ENTITIES,
    GROUPS,
    MODEL,
    OIP_SERVICE,
    Call,
    Clients,
    EventSource,
    InferenceProbe,
    Lags,
    Truth,
    codes,
    eventually,
    infer,
    read_topic,
    seconds_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

T = TypeVar("T")

KILLS = "SIGKILL mid-stream under `driftloop up` (supervisor restarts)"
OUTAGES = "Inference while its dependencies are down"
POISON = "Poison records (value does not decode) on every consumed topic"
REPLAYS = "Duplicates and replays"
SIGTERM = "SIGTERM under load (inference)"


@pytest.fixture(scope="module")
def source() -> EventSource:
    return EventSource()


@pytest.fixture(scope="module")
def truth() -> Truth:
    return Truth()


def watch(stack: Any, kill: Any) -> asyncio.Task[float]:
    """Start timing a killed service's return to SERVING at once."""
    return asyncio.create_task(stack.healthy_again(kill))


def started_pattern(request_id: str) -> str:
    return r'"training_started"[^{}]*' + request_id


# ---------------------------------------------------------------------- SIGKILL


async def test_sigkill_of_each_service_loses_nothing_and_counts_nothing_twice(
    stack: Any, source: EventSource, truth: Truth, figures: Any
) -> None:
    """Each of the six services is killed with SIGKILL in the middle of its work
    (the registry as a training run starts, so the model arrives while it is
    down; the trainer during a run; ingestion and drift in a stream; the feature
    store and inference while an application calls inference) and restarted by
    the supervisor. The stream's events, labels and training requests all end
    up counted exactly once, and inference answers with its loaded model while
    the registry or the feature store is down."""
    figures.row(
        KILLS, service="(stack)", fault="driftloop up until all ready", healthy_s=stack.ready_s
    )
    async with Clients(stack) as clients:
        await clients.follow(
            Topics.MODELS_TRAINED, Topics.MODELS_REGISTERED, Topics.TRAINING_FAILED
        )

        # A labelled history, in the offline log, then the first training run.
        history = source.take(300)
        await clients.raw(history, truth)
        await eventually(lambda: clients.exact(truth), 30, "the history counted online")
        await eventually(
            lambda: _at_least(clients.training_rows(), len(history)), 30, "the offline log"
        )

        # Everything this part sends, once acknowledged: what the stack must end
        # up holding. Recovery is timed against it from each kill.
        stream = source.take(400)
        target = Truth()
        target.acknowledged(history + stream)

        def timed(kill: Any, check: Callable[[], Any], what: str) -> asyncio.Task[float]:
            return asyncio.create_task(seconds_until(check, kill.at, 120, what))

        # The registry dies as the first run starts: its model is published while
        # the registry is down, and must be registered once it is back.
        first = await clients.request_training("fault suite: first model")
        await eventually(lambda: stack.logged(started_pattern(first)), 30, "the first run")
        registry_kill = await stack.kill("registry")
        healthy = {"registry": watch(stack, registry_kill)}
        caught_up = {
            "registry": timed(registry_kill, lambda: clients.registered(first), "version 1")
        }
        await eventually(lambda: clients.trained(first), 90, "the first model trained")
        first_published_s = time.monotonic() - registry_kill.at

        second = await clients.request_training("fault suite: second model")
        await eventually(lambda: stack.logged(started_pattern(second)), 30, "the second run")
        trainer_mid_run = not clients.trained(second)
        trainer_kill = await stack.kill("trainer")
        healthy["trainer"] = watch(stack, trainer_kill)
        caught_up["trainer"] = timed(trainer_kill, lambda: clients.registered(second), "version 2")

        # The stream: half on events.raw, half through IngestStream in chunks of 20;
        # ingestion is killed a quarter in, drift half-way.
        on_topic, on_grpc = stream[0::2], stream[1::2]
        sent = [0]
        kills: dict[str, Any] = {}

        def drift_counted() -> bool:
            return clients.drift_labels() == target.labelled

        outcome = {
            "ingestion": (lambda: clients.exact(target), "exact online counts"),
            "drift": (drift_counted, "every label counted by drift"),
        }

        async def kill_when(service: str, at: int) -> None:
            await eventually(lambda: sent[0] >= at, 30, f"{at} events sent")
            kills[service] = kill = await stack.kill(service)
            healthy[service] = watch(stack, kill)
            caught_up[service] = timed(kill, *outcome[service])

        _, ingest_figures, _, _ = await asyncio.gather(
            clients.raw(on_topic, truth, pause_every=10, pause_s=0.1, sent=sent),
            clients.ingest(on_grpc, truth, pause_s=0.1),
            kill_when("ingestion", len(on_topic) // 4),
            kill_when("drift", len(on_topic) // 2),
        )
        assert truth.events.keys() == target.events.keys(), "every event acknowledged"
        healthy_s = {name: await task for name, task in healthy.items()}
        caught_up_s = {name: await task for name, task in caught_up.items()}

        versions = await clients.versions()
        by_request = Counter(v.request_id for v in versions)
        failed = [
            m.request_id for m in clients.decoded(Topics.TRAINING_FAILED, events_pb2.TrainingFailed)
        ]
        diff = await clients.compare(truth)
        assert diff is not None
        labels = clients.drift_labels()
        figures.row(
            KILLS,
            service="ingestion",
            fault="SIGKILL at 1/4 of a 400-event stream",
            sent=len(stream),
            acked=len(on_topic) + ingest_figures.accepted,
            lost=diff.lost,
            twice=diff.twice,
            healthy_s=healthy_s["ingestion"],
            caught_up_s=caught_up_s["ingestion"],
            notes=f"IngestStream calls failed and sent again {ingest_figures.retried_calls}; "
            f"events answered as duplicates {ingest_figures.duplicates}",
        )
        figures.row(
            KILLS,
            service="drift",
            fault="SIGKILL at 1/2 of the same stream",
            sent=truth.labelled,
            acked=truth.labelled,
            lost=max(truth.labelled - labels, 0),
            twice=max(labels - truth.labelled, 0),
            healthy_s=healthy_s["drift"],
            caught_up_s=caught_up_s["drift"],
            notes="labels counted in drift's saved state",
        )
        figures.row(
            KILLS,
            service="registry",
            fault="SIGKILL as the first training run starts",
            sent=1,
            acked=1,
            lost=0 if by_request[first] else 1,
            twice=max(by_request[first] - 1, 0),
            healthy_s=healthy_s["registry"],
            caught_up_s=caught_up_s["registry"],
            notes=f"model versions for the request; its ModelTrained published "
            f"{first_published_s:.1f}s after the kill",
        )
        figures.row(
            KILLS,
            service="trainer",
            fault="SIGKILL as the second run starts"
            + (" (mid-run)" if trainer_mid_run else " (the run had finished)"),
            sent=1,
            acked=1,
            lost=0 if by_request[second] else 1,
            twice=max(by_request[second] - 1, 0),
            healthy_s=healthy_s["trainer"],
            caught_up_s=caught_up_s["trainer"],
            notes="model versions for the request",
        )
        assert diff.exact, diff
        assert labels == truth.labelled
        assert by_request[first] == 1 and by_request[second] == 1, by_request
        assert max(by_request.values()) == 1, f"a request registered twice: {by_request}"
        assert sorted(v.version for v in versions) == list(range(1, len(versions) + 1))
        assert first not in failed and second not in failed, failed

        # Inference, its feature store and its registry: an application keeps calling.
        champion = await eventually(clients.champion, 30, "a champion")
        await eventually(
            lambda: _is(clients.served_version(), champion), 60, f"inference serving v{champion}"
        )
        probe = InferenceProbe(clients.channel("inference"), "probe-kills")
        probe.start()
        await asyncio.sleep(1.0)

        outage = source.take(100)
        target.acknowledged(outage)
        features_kill = await stack.kill("features")
        features_back = watch(stack, features_kill)
        features_counted = timed(
            features_kill, lambda: clients.exact(target), "exact counts after the outage"
        )
        outage_write = asyncio.create_task(clients.raw(outage, truth, pause_every=10, pause_s=0.15))
        await asyncio.sleep(0.5)
        registry_kill_2 = await stack.kill("registry")
        registry_2_s = await stack.healthy_again(registry_kill_2)
        registry_2_end = time.monotonic()
        await asyncio.sleep(0.5)
        inference_kill = await stack.kill("inference")
        inference_s = await stack.healthy_again(inference_kill)
        inference_ready_s = await seconds_until(
            lambda: _is(clients.served_version(), champion),
            inference_kill.at,
            60,
            f"inference serving v{champion} again",
        )
        inference_end = inference_kill.at + inference_ready_s
        await outage_write
        features_s = await features_back
        features_end = features_kill.at + features_s
        features_counted_s = await features_counted
        expected = target.counts()

        def fresh() -> list[Call]:
            """Predict answers, after the store is back, with every event counted."""
            return [
                call
                for call in probe.calls
                if call.kind == "predict_lookup"
                and call.code == "OK"
                and call.at > features_end
                and call.txn_count == expected[call.entity][0]
            ]

        await eventually(fresh, 60, "Predict with fresh features")
        fresh_s = fresh()[0].end - features_kill.at
        await probe.stop()
        diff = await clients.compare(truth)
        assert diff is not None

    inference_down = [(inference_kill.at, inference_end)]
    in_features_outage = {
        kind: probe.during(features_kill.at, features_end, kind, inference_down)
        for kind in ("infer", "predict_full", "predict_lookup")
    }
    in_registry_outage = probe.during(registry_kill_2.at, registry_2_end, "infer", inference_down)
    in_inference_outage = probe.during(inference_kill.at, inference_end, "infer")
    fresh_at = features_kill.at + fresh_s
    # Outside the outages every call is answered; Predict needing a lookup is out
    # until inference reaches the restarted feature store again.
    elsewhere = Counter(
        call.outcome
        for call in probe.calls
        if not any(call.overlaps(a, b) for a, b in inference_down)
        and not (call.kind == "predict_lookup" and call.overlaps(features_kill.at, fresh_at))
    )
    served = Counter(
        call.version for call in probe.calls if call.code == "OK" and call.kind == "infer"
    )
    # Predict may also be answered by an online learner (version 0) once it leads.
    predicted = {call.version for call in probe.calls if call.code == "OK" and call.kind != "infer"}
    figures.row(
        KILLS,
        service="features",
        fault="SIGKILL while 100 events stream in",
        sent=len(outage),
        acked=len(outage),
        lost=diff.lost,
        twice=diff.twice,
        healthy_s=features_s,
        caught_up_s=features_counted_s,
        notes=f"Predict answered with fresh features {fresh_s:.1f}s after the kill",
    )
    figures.row(
        KILLS,
        service="registry",
        fault="SIGKILL again, inference serving",
        healthy_s=registry_2_s,
        notes=f"ModelInfer meanwhile: {codes(in_registry_outage)}",
    )
    figures.row(
        KILLS,
        service="inference",
        fault="SIGKILL while an application calls it",
        healthy_s=inference_s,
        caught_up_s=inference_ready_s,
        notes=f"ModelInfer meanwhile: {codes(in_inference_outage)} (one replica)",
    )
    figures.row(
        OUTAGES,
        outage=f"feature store down {features_s:.1f}s",
        ModelInfer=codes(in_features_outage["infer"]),
        Predict_all_features_given=codes(in_features_outage["predict_full"]),
        Predict_needing_lookup=codes(in_features_outage["predict_lookup"]),
    )
    figures.row(
        OUTAGES,
        outage=f"registry down {registry_2_s:.1f}s",
        ModelInfer=codes(in_registry_outage),
        Predict_all_features_given=codes(
            probe.during(registry_kill_2.at, registry_2_end, "predict_full", inference_down)
        ),
        Predict_needing_lookup="(feature store down too)",
    )
    figures.row(
        OUTAGES,
        outage="(versions answered over the whole run)",
        ModelInfer=", ".join(f"v{v} {n}" for v, n in sorted(served.items(), key=str)),
    )
    assert diff.exact, diff
    # While the registry or the feature store is down, the loaded model answers.
    assert in_features_outage["infer"] and set(in_features_outage["infer"]) == {"OK"}
    assert set(in_features_outage["predict_full"]) == {"OK"}
    assert in_registry_outage and set(in_registry_outage) == {"OK"}
    # A lookup the store cannot answer fails with UNAVAILABLE (documented), never
    # a prediction on defaults standing in for features the store holds.
    assert set(in_features_outage["predict_lookup"]) <= {"OK", "UNAVAILABLE"}
    assert set(elsewhere) == {"OK"}, elsewhere
    assert set(served) == {champion}
    assert predicted <= {champion, 0}, predicted


async def _is(value: Awaitable[T], expected: T) -> bool:
    return await value == expected


async def _at_least(value: Awaitable[int], floor: int) -> bool:
    return await value >= floor


# ---------------------------------------------------------------------- SIGTERM


async def test_sigterm_under_load_drains_inference_without_a_failed_call(
    stack: Any, figures: Any
) -> None:
    """Sixteen callers keep inference busy; SIGTERM. Its health turns NOT_SERVING
    first, every call in flight finishes, none fails (the callers stop sending once
    they see NOT_SERVING, as a load balancer does), and the supervisor starts it
    again."""
    async with Clients(stack) as clients:
        version = await eventually(clients.served_version, 60, "inference serving a model")
        target = stack.endpoints.inference
        channels = [grpc.aio.insecure_channel(target, options=CLIENT_OPTIONS) for _ in range(4)]
        health = health_pb2_grpc.HealthStub(clients.channel("inference"))
        draining = asyncio.Event()
        seen: dict[str, float] = {}
        calls: list[Call] = []

        async def caller(i: int) -> None:
            n = 0
            while not draining.is_set():
                calls.append(await infer(channels[i % 4], ENTITIES[i % 12], 10_000 * i + n))
                n += 1

        async def watch_health() -> None:
            while True:
                try:
                    reply = await health.Check(
                        health_pb2.HealthCheckRequest(service=OIP_SERVICE), timeout=1
                    )
                except grpc.aio.AioRpcError as error:
                    seen["error"] = time.monotonic()
                    seen[error.code().name] = seen["error"]
                    draining.set()
                    return
                if reply.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                    seen["not_serving"] = time.monotonic()
                    draining.set()
                    return
                await asyncio.sleep(0.01)

        try:
            callers = [asyncio.create_task(caller(i)) for i in range(16)]
            watcher = asyncio.create_task(watch_health())
            await asyncio.sleep(1.0)
            kill = await stack.kill("inference", signal.SIGTERM)
            await asyncio.wait_for(watcher, 20)
            await asyncio.wait_for(asyncio.gather(*callers), 20)
            back_s = await stack.healthy_again(kill)
            ready_s = await seconds_until(
                lambda: _is(clients.served_version(), version),
                kill.at,
                60,
                f"inference serving v{version} again",
            )
        finally:
            for channel in channels:
                await channel.close()

    in_flight = [c for c in calls if c.at < kill.at < c.end]
    after_signal = [c for c in calls if c.at >= kill.at]
    failed = Counter(c.code for c in calls if c.code != "OK")
    exit_logged = stack.logged(r"inference \| exited with code 0 ")
    figures.row(
        SIGTERM,
        calls=len(calls),
        in_flight_at_signal=len(in_flight),
        started_after_signal=len(after_signal),
        failed=sum(failed.values()),
        not_serving_after_s=seen.get("not_serving", seen.get("error", kill.at)) - kill.at,
        exit_code_0=exit_logged,
        healthy_s=back_s,
        serving_again_s=ready_s,
    )
    assert "not_serving" in seen, f"the port closed before health said NOT_SERVING: {seen}"
    assert in_flight, "SIGTERM landed while calls were in flight"
    assert not failed, failed
    assert exit_logged, "inference exits 0 after a SIGTERM"


# ---------------------------------------------------------------------- poison


@dataclass(frozen=True)
class Poison:
    topic: str
    key: str
    ce_type: str | None
    value: bytes
    consumers: tuple[str, ...]


# A protobuf value that does not decode as any message ("wire format was corrupt").
GARBAGE = b"\xff\xff\xff\xff"


def poisons(entity: str) -> list[Poison]:
    """One poison per consumed topic, keyed as that topic's records are (entity or
    model), with the CloudEvents type its consumers expect."""
    protobuf = [
        (Topics.VALID, entity, "driftloop.event.observed.v1", ("features", "drift")),
        (Topics.FEATURES_OFFLINE, entity, "driftloop.features.row.v1", ("features",)),
        (Topics.PREDICTIONS, entity, "driftloop.prediction.made.v1", ("drift",)),
        (Topics.MODELS_TRAINED, MODEL, "driftloop.model.trained.v1", ("registry",)),
        (Topics.TRAINING_REQUESTED, MODEL, "driftloop.training.requested.v1", ("trainer",)),
        (Topics.MODELS_PROMOTED, MODEL, "driftloop.model.promoted.v1", ("drift", "inference")),
        (Topics.MODELS_REGISTERED, MODEL, "driftloop.model.registered.v1", ("drift",)),
        (Topics.TRAINING_FAILED, MODEL, "driftloop.training.failed.v1", ("drift",)),
    ]
    return [
        Poison(Topics.RAW, entity, None, b"{not json", ("ingestion",)),
        *(Poison(t, key, kind, GARBAGE, consumers) for t, key, kind, consumers in protobuf),
    ]


async def test_poison_on_every_consumed_topic_is_dead_lettered_and_the_partition_moves_on(
    stack: Any, source: EventSource, truth: Truth, figures: Any
) -> None:
    """A record whose value does not decode, on each topic a service consumes,
    keyed like the records around it. Each consumer dead-letters it with a
    reason and its source topic/partition/offset, valid records after it on the
    same partition are handled (a payment is counted, a promotion is served),
    and every consumer's lag returns to zero."""
    entity = ENTITIES[3]
    async with Clients(stack) as clients:
        await clients.follow(Topics.DEADLETTER)
        placed: dict[Poison, tuple[int, int]] = {}
        for poison in poisons(entity):
            headers = (
                []
                if poison.ce_type is None
                else make_headers(
                    poison.ce_type, "/faults", event_id=f"poison-{poison.topic}"
                ).to_kafka()
            )
            placed[poison] = await clients.publish_raw(
                poison.topic, poison.value, poison.key.encode(), headers
            )

        # Valid records behind the poison, on the same partitions.
        after = source.take(1)
        after[0]["customer_id"] = entity
        await clients.raw(after, truth)
        versions = await clients.versions()
        champion = await clients.champion()
        other = next(v.version for v in versions if v.version != champion)
        registry = registry_pb2_grpc.RegistryServiceStub(clients.channel("registry"))
        await registry.Promote(
            registry_pb2.PromoteRequest(
                model=MODEL, version=other, reason="fault suite: after a poison", actor="faults"
            ),
            timeout=10,
        )

        def letters_for(poison: Poison) -> dict[str, events_pb2.DeadLetter]:
            partition, offset = placed[poison]
            return {
                letter.service: letter
                for letter in clients.dead_letters()
                if (letter.source_topic, letter.source_partition, letter.source_offset)
                == (poison.topic, partition, offset)
            }

        def all_dead_lettered() -> bool:
            return all(set(p.consumers) <= set(letters_for(p)) for p in placed)

        async def lags() -> Lags:
            found = Lags()
            for poison in placed:
                for consumer in poison.consumers:
                    if consumer == "drift":
                        found[f"drift {poison.topic}"] = await clients.drift_lag(poison.topic)
                    elif consumer != "inference":  # no committed position: see the promotion
                        group = GROUPS[poison.topic]
                        found[f"{consumer} {poison.topic}"] = await clients.lag(group, poison.topic)
            return found

        # Every check runs, so the figures show each consumer even when one fails.
        checks = [
            (all_dead_lettered, "every poison dead-lettered by its consumers"),
            (lambda: clients.exact(truth), "the payment after the poison counted"),
            (lambda: _is(clients.served_version(), other), f"v{other} served after the poison"),
            (lags, "every consumer's lag back to zero"),
        ]
        problems: list[str] = []
        started = time.monotonic()
        for check, what in checks:
            try:
                await eventually(check, 60, what)
            except AssertionError as error:
                problems.append(str(error))
        settled_s = time.monotonic() - started
        last_lags = await lags()

    for poison, (partition, offset) in placed.items():
        found = letters_for(poison)
        for consumer in poison.consumers:
            letter = found.get(consumer)
            figures.row(
                POISON,
                topic=poison.topic,
                consumer=consumer,
                at=f"{partition}/{offset}",
                dead_lettered="yes" if letter else "NO",
                rule=letter.rule if letter else None,
                reason=(letter.reason[:60] if letter else None),
                lag_after="-"
                if consumer == "inference"
                else last_lags.total(consumer, poison.topic),
            )
    figures.row(POISON, topic="(all)", consumer="settled", at=f"{settled_s:.1f}s")
    assert not problems, problems
    for poison in placed:
        for letter in letters_for(poison).values():
            assert letter.reason and letter.payload == poison.value, letter
            assert letter.key == poison.key.encode()


# ---------------------------------------------------------------------- replays


def decodes(record: Any, message: Any) -> bool:
    try:
        message.FromString(record.value or b"")
    except DecodeError:
        return False
    return bool(record.value)


async def test_duplicates_and_replays_change_nothing(
    stack: Any, truth: Truth, figures: Any
) -> None:
    """The same event ids again (on events.raw and through IngestStream), every
    record of events.valid again (what a rewound feature store or drift reads),
    and the training requests, trained models and latest promotion again: no
    count, label, training row, model version or served version changes."""
    acknowledged = list(truth.events.values())
    async with Clients(stack) as clients:
        valid_before = await read_topic(clients, Topics.VALID)
        versions_before = [(v.version, v.request_id) for v in await clients.versions()]
        served_before = await clients.served_version()
        await eventually(
            lambda: _is(clients.training_rows(), len(truth.events)), 30, "one row per event"
        )
        labels_before = clients.drift_labels()
        replayed_before = clients.metric(
            "trainer", "driftloop_trainer_runs_total", outcome="replayed"
        )
        trained_before = clients.metric(
            "trainer", "driftloop_trainer_runs_total", outcome="trained"
        )
        assert await clients.exact(truth)

        # The same events again: ingestion acknowledges them as duplicates.
        await clients.raw(acknowledged[:300], None)
        again = await clients.ingest(acknowledged[300:400], None, chunk=100)

        async def raw_consumed() -> bool:
            return not any((await clients.lag(GROUPS[Topics.RAW], Topics.RAW)).values())

        await eventually(raw_consumed, 60, "ingestion through the replayed events")
        valid_after_raw = await read_topic(clients, Topics.VALID)

        # What a rewound consumer reads: every valid record of events.valid again,
        # and the lifecycle records the trainer, registry and inference act on.
        copies = {
            Topics.VALID: [
                r for r in valid_before
                if decodes(r, events_pb2.Observation) or decodes(r, events_pb2.Label)
            ],
            Topics.TRAINING_REQUESTED: [
                r for r in await read_topic(clients, Topics.TRAINING_REQUESTED)
                if decodes(r, events_pb2.TrainingRequested)
            ],
            Topics.MODELS_TRAINED: [
                r for r in await read_topic(clients, Topics.MODELS_TRAINED)
                if decodes(r, events_pb2.ModelTrained)
            ],
            Topics.MODELS_PROMOTED: [
                r for r in await read_topic(clients, Topics.MODELS_PROMOTED)
                if decodes(r, events_pb2.ModelPromoted)
            ][-1:],
        }  # fmt: skip
        for topic, records in copies.items():
            for record in records:
                await clients.publish_raw(
                    topic, record.value, record.key, list(record.headers or ())
                )

        async def all_consumed() -> Lags:
            lags = Lags()
            for topic in (
                Topics.VALID,
                Topics.FEATURES_OFFLINE,  # the rows the replays publish again
                Topics.TRAINING_REQUESTED,
                Topics.MODELS_TRAINED,
            ):
                lags[f"{GROUPS[topic]} {topic}"] = await clients.lag(GROUPS[topic], topic)
            for topic in (Topics.VALID, Topics.MODELS_PROMOTED):
                lags[f"drift {topic}"] = await clients.drift_lag(topic)
            return lags

        started = time.monotonic()
        await eventually(all_consumed, 60, "every replayed record consumed")
        consumed_s = time.monotonic() - started
        diff = await clients.compare(truth)
        versions_after = [(v.version, v.request_id) for v in await clients.versions()]
        served_after = await clients.served_version()
        rows_after = await clients.training_rows()
        labels_after = clients.drift_labels()
        replayed = (
            clients.metric("trainer", "driftloop_trainer_runs_total", outcome="replayed")
            - replayed_before
        )
        trained = (
            clients.metric("trainer", "driftloop_trainer_runs_total", outcome="trained")
            - trained_before
        )

    figures.row(
        REPLAYS,
        replayed="300 events again on events.raw",
        records=300,
        expected="no new events.valid record",
        observed=f"events.valid +{len(valid_after_raw) - len(valid_before)}",
    )
    figures.row(
        REPLAYS,
        replayed="100 events again through IngestStream",
        records=100,
        expected="all acknowledged as duplicates",
        observed=f"accepted {again.accepted}, duplicates {again.duplicates}",
    )
    figures.row(
        REPLAYS,
        replayed="events.valid again (rewound consumers)",
        records=len(copies[Topics.VALID]),
        expected="counts, labels, rows unchanged",
        observed=f"lost {diff.lost if diff is not None else '?'}, "
        f"twice {diff.twice if diff is not None else '?'}; "
        f"drift labels {labels_before}->{labels_after}; rows {len(truth.events)}->{rows_after}",
    )
    figures.row(
        REPLAYS,
        replayed="training.requested again",
        records=len(copies[Topics.TRAINING_REQUESTED]),
        expected="no run, no version",
        observed=f"runs replayed +{replayed:.0f}, trained +{trained:.0f}",
    )
    figures.row(
        REPLAYS,
        replayed="models.trained again",
        records=len(copies[Topics.MODELS_TRAINED]),
        expected="no new version",
        observed=f"versions {len(versions_before)}->{len(versions_after)}",
    )
    figures.row(
        REPLAYS,
        replayed="latest models.promoted again",
        records=len(copies[Topics.MODELS_PROMOTED]),
        expected="same version served",
        observed=f"v{served_before} -> v{served_after}",
    )
    figures.row(REPLAYS, replayed="(all consumed)", observed=f"{consumed_s:.1f}s")
    assert len(valid_after_raw) == len(valid_before), "a duplicate event was published again"
    assert (again.accepted, again.duplicates) == (100, 100)
    assert diff is not None and diff.exact, diff
    assert labels_after == labels_before == truth.labelled
    assert rows_after == len(truth.events), "the offline log keeps one row per event"
    assert versions_after == versions_before
    assert served_after == served_before
    assert trained == 0 and replayed == len(copies[Topics.TRAINING_REQUESTED])


BURST = "SIGKILL of the feature store in a burst"
BURST_EVENTS = 20_000


@pytest.mark.timeout(420)
async def test_sigkill_of_the_feature_store_mid_burst_is_exact_soon_after_its_restart(
    stack: Any, figures: Any
) -> None:
    """A producer pushes 20,000 events at once for 200 customers of their own; the
    feature store is SIGKILLed once a quarter of them are counted. Restarted by
    the supervisor, it recovers its table from the changelog (tiles, not every
    event) and reads the rest of the burst: every count and mean is exact, and
    the figures say how long after its restart."""
    rng = random.Random(21)
    customers = [f"burst-{i}" for i in range(200)]
    start_ms = int(time.time() * 1000) - 240_000
    # 10 ms of event time apart: the burst spans 200 s, inside both windows.
    events = [
        {
            "event_id": f"burst-{n}",
            "customer_id": rng.choice(customers),
            "ts": start_ms + n * 10,
            "amount": round(rng.uniform(1, 500), 2),
            "channel": rng.choice(["web", "pos", "atm"]),
            "hour": rng.randrange(24),
            "is_fraud": int(rng.random() < 0.05),
        }
        for n in range(BURST_EVENTS)
    ]
    burst = Truth()
    async with Clients(stack) as clients:
        rows_before = await clients.end(Topics.FEATURES_OFFLINE)
        sent = time.monotonic()
        acks = [
            await clients.producer.send(
                Topics.RAW, json.dumps(event).encode(), key=str(event["customer_id"]).encode()
            )
            for event in events
        ]
        await asyncio.gather(*acks)
        burst.acknowledged(events)
        produced_s = time.monotonic() - sent

        async def counted() -> int:
            return await clients.end(Topics.FEATURES_OFFLINE) - rows_before

        await eventually(
            lambda: _at_least(counted(), BURST_EVENTS // 4), 120, "a quarter of the burst"
        )
        kill = await stack.kill("features")
        at_kill = await counted()
        healthy_s = await stack.healthy_again(kill, timeout_s=120)
        restarted = kill.at + healthy_s
        exact_s = await seconds_until(
            lambda: clients.exact(burst, customers), restarted, 180, "exact counts after the burst"
        )
        diff = await clients.exact(burst, customers)

    figures.row(
        BURST,
        events=BURST_EVENTS,
        entities=len(customers),
        produced_s=produced_s,
        counted_at_kill=at_kill,
        healthy_s=healthy_s,
        exact_after_restart_s=exact_s,
        lost=diff.lost if diff is not None else "?",
        twice=diff.twice if diff is not None else "?",
    )
    assert diff is not None and diff.exact, diff
