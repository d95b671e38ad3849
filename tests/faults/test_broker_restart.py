"""The embedded broker killed mid-stream: everything recovers, nothing counts twice.

Tansu keeps every topic, offset and consumer group in memory, so a broker
restart is a new, empty broker. `driftloop up` starts it again on the same
port, stops and restarts the services whose state mirrors it (feature store,
drift, ingestion) and leaves the others to reconnect (registry, trainer,
inference). What the lost broker held comes back the way an at-least-once
producer sends it after a broker loss: the whole source stream again.

Checked where a user sees it: online counts and means equal the truth (none
lost, none counted twice), one offline row per event, drift's label count, the
registry's versions, inference answering with its loaded model throughout and
following a promotion made afterwards, ingestion accepting, every service
SERVING, and no dead letter. This module has its own stack (the `stack`
fixture is per module), so the broker's loss touches no other fault test.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from driftloop.v1 import registry_pb2, registry_pb2_grpc
from driftloop_core.kafka import Topics
from support.faults import (
    MODEL,
    Call,
    Clients,
    EventSource,
    InferenceProbe,
    Truth,
    codes,
    eventually,
    read_topic,
    seconds_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

BROKER = "Broker restart: Tansu SIGKILLed mid-stream, `driftloop up` restarts it, source replayed"
# Services `driftloop up` restarts on a new broker; the others keep their process.
RESTARTED = ("features", "ingestion", "drift")
KEPT = ("registry", "trainer", "inference")


class Producer:
    """An at-least-once producer of `events.raw`: each event is sent until the
    broker acknowledges it, through an outage too."""

    def __init__(self, bootstrap: str, truth: Truth) -> None:
        self._producer = AIOKafkaProducer(bootstrap_servers=bootstrap, request_timeout_ms=5000)
        self._truth = truth
        self.sent = 0
        self.retried = 0

    async def __aenter__(self) -> Producer:
        await self._producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._producer.stop()

    async def one_by_one(
        self, events: list[dict[str, Any]], *, pause_every: int, pause_s: float
    ) -> None:
        deadline = time.monotonic() + 120
        for i, event in enumerate(events):
            while True:
                try:
                    await self._producer.send_and_wait(Topics.RAW, *_record(event))
                    break
                except KafkaError:
                    self.retried += 1
                    assert time.monotonic() < deadline, "the broker never acknowledged again"
                    await asyncio.sleep(0.25)
            self._truth.acknowledged([event])
            self.sent += 1
            if i % pause_every == pause_every - 1:
                await asyncio.sleep(pause_s)

    async def replay(self, events: list[dict[str, Any]]) -> None:
        """Everything sent before, pipelined (the broker is up)."""
        futures = [await self._producer.send(Topics.RAW, *_record(event)) for event in events]
        await asyncio.gather(*futures)


def _record(event: dict[str, Any]) -> tuple[bytes, bytes]:
    return json.dumps(event).encode(), str(event["customer_id"]).encode()


async def _versions(clients: Clients) -> list[tuple[int, str]]:
    return sorted((v.version, v.request_id) for v in await clients.versions())


async def test_broker_restart_mid_stream_converges_once_the_source_is_replayed(
    stack: Any, figures: Any
) -> None:
    """A labelled history and two model versions; then a 300-event stream (half
    on events.raw, half through IngestStream) during which the broker is
    SIGKILLed while an application calls inference. Once every service is back,
    the producer sends the whole stream again: every count, row, label and
    version equals the truth, and the stack takes new events and promotions."""
    source = EventSource(seed=11)
    truth = Truth()
    async with Clients(stack) as clients:
        # A labelled history in the offline log, and two model versions from it.
        history = source.take(300)
        await clients.raw(history, truth)
        await eventually(lambda: clients.exact(truth), 60, "the history counted online")
        await eventually(
            lambda: _equals(clients.training_rows(), len(history)), 60, "the offline log"
        )
        requests = [await clients.request_training(f"broker restart: model {n}") for n in (1, 2)]

        async def both_registered() -> bool:
            return {r for _, r in await _versions(clients)} >= set(requests)

        await eventually(both_registered, 90, "two model versions")
        versions_before = await _versions(clients)
        champion = await eventually(clients.champion, 30, "a champion")
        await eventually(
            lambda: _equals(clients.served_version(), champion), 60, f"v{champion} served"
        )
        other = next(v for v, _ in versions_before if v != champion)
        letters_before = await read_topic(clients, Topics.DEADLETTER)
        pids_before = {name: status.pid for name, status in (await stack.statuses()).items()}

        probe = InferenceProbe(clients.channel("inference"), "probe-broker")
        probe.start()
        await asyncio.sleep(0.5)

        # The stream: half on events.raw, half through IngestStream in chunks of
        # 20; the broker is killed a third of the way in.
        stream = source.take(300)
        on_topic, on_grpc = stream[0::2], stream[1::2]
        async with Producer(stack.bootstrap, truth) as producer:

            def anew(statuses: dict[str, Any], name: str) -> bool:
                status = statuses[name]
                return bool(status.ready) and status.pid not in (None, pids_before[name])

            async def serving_anew(name: str) -> bool:
                return anew(await stack.statuses(), name)

            async def all_serving() -> bool:
                """Every service SERVING, the restarted ones in new processes."""
                statuses = await stack.statuses()
                return all(status.ready for status in statuses.values()) and all(
                    anew(statuses, name) for name in ("broker", *RESTARTED)
                )

            back: dict[str, asyncio.Task[float]] = {}

            async def kill_when(at: int) -> Any:
                await eventually(lambda: producer.sent >= at, 60, f"{at} events sent")
                kill = stack.kill_broker()
                # Timed from the kill, while the stream goes on.
                for name in ("broker", *RESTARTED):
                    back[name] = asyncio.create_task(
                        seconds_until(lambda n=name: serving_anew(n), kill.at, 120, f"{name} back")
                    )
                back["all"] = asyncio.create_task(
                    seconds_until(all_serving, kill.at, 120, "every service back")
                )
                return kill

            _, ingest_figures, kill = await asyncio.gather(
                producer.one_by_one(on_topic, pause_every=10, pause_s=0.1),
                clients.ingest(on_grpc, truth, pause_s=0.1, timeout_s=120),
                kill_when(len(on_topic) // 3),
            )
            assert truth.events.keys() == {e["event_id"] for e in history + stream}
            back_s = {name: await task for name, task in back.items()}
            outage_end = kill.at + max(back_s.values())

            # The producer sends everything again, as after any broker loss.
            replayed = history + stream
            await producer.replay(replayed)
            replay_at = time.monotonic()
            exact_s, rows_s, labels_s = await asyncio.gather(
                seconds_until(lambda: clients.exact(truth), replay_at, 90, "exact online counts"),
                seconds_until(
                    lambda: _equals(clients.training_rows(), len(truth.events)),
                    replay_at,
                    90,
                    "one offline row per event",
                ),
                seconds_until(
                    lambda: clients.drift_labels() == truth.labelled,
                    replay_at,
                    90,
                    "every label counted once by drift",
                ),
            )

        expected = truth.counts()

        def fresh() -> list[Call]:
            return [
                call
                for call in probe.calls
                if call.kind == "predict_lookup"
                and call.code == "OK"
                and call.at > replay_at + exact_s
                and call.txn_count == expected[call.entity][0]
            ]

        await eventually(fresh, 60, "Predict with the replayed features")
        await probe.stop()
        diff = await clients.compare(truth)
        versions_after = await _versions(clients)

        # Ingestion accepts new events and counts them; a promotion reaches inference.
        more = source.take(20)
        accepted = await clients.ingest(more, truth, timeout_s=30)
        await eventually(lambda: clients.exact(truth), 60, "the new events counted")
        registry = registry_pb2_grpc.RegistryServiceStub(clients.channel("registry"))
        promoted_at = time.monotonic()
        await registry.Promote(
            registry_pb2.PromoteRequest(
                model=MODEL, version=other, reason="after the broker restart", actor="faults"
            ),
            timeout=10,
        )
        promoted_s = await seconds_until(
            lambda: _equals(clients.served_version(), other), promoted_at, 60, f"v{other} served"
        )
        statuses = await stack.statuses()
        dead_letters = await read_topic(clients, Topics.DEADLETTER)

    during = {
        kind: probe.during(kill.at, outage_end, kind)
        for kind in ("infer", "predict_full", "predict_lookup")
    }
    before_replay = probe.during(outage_end, replay_at + exact_s, "predict_lookup")
    served = Counter(call.version for call in probe.calls if call.code == "OK")
    in_outage = {
        c.version for c in probe.calls if c.code == "OK" and c.overlaps(kill.at, outage_end)
    }
    figures.row(
        BROKER,
        part="(stack)",
        fault="driftloop up until all ready",
        healthy_s=stack.ready_s,
    )
    figures.row(
        BROKER,
        part="stream",
        fault="broker SIGKILL at 1/3 of a 300-event stream (half events.raw, half IngestStream)",
        sent=len(stream),
        acked=len(stream),
        lost=diff.lost if diff else None,
        twice=diff.twice if diff else None,
        healthy_s=back_s["all"],
        caught_up_s=exact_s,
        notes=f"replayed {len(replayed)} events; caught_up_s from the replay; events.raw sends "
        f"retried {producer.retried}, IngestStream calls sent again {ingest_figures.retried_calls}",
    )
    for name in ("broker", *RESTARTED):
        figures.row(
            BROKER,
            part=name,
            fault="restarted by the supervisor" if name != "broker" else "SIGKILL",
            healthy_s=back_s[name],
            caught_up_s={"features": exact_s, "drift": labels_s}.get(name),
            notes={
                "broker": "new cluster id, topics created again",
                "features": f"offline rows complete {rows_s:.1f}s after the replay",
                "drift": "every label counted once (after the replay)",
                "ingestion": f"new events accepted after: {accepted.accepted}/{len(more)}",
            }[name],
        )
    figures.row(
        BROKER,
        part="registry, trainer",
        fault="kept running, reconnected",
        notes=f"versions {len(versions_before)} -> {len(versions_after)}",
    )
    figures.row(
        BROKER,
        part="inference",
        fault="kept running, reconnected",
        caught_up_s=promoted_s,
        notes=f"ModelInfer during the outage: {codes(during['infer'])}; Predict with every "
        f"feature: {codes(during['predict_full'])}; needing the store: "
        f"{codes(during['predict_lookup'])}, then until the replay "
        f"{codes(before_replay)}; a promotion afterwards served after caught_up_s",
    )

    assert diff is not None and diff.exact, diff
    assert accepted.accepted == len(more) and accepted.duplicates == 0
    assert versions_after == versions_before, "a model version was lost or registered twice"
    # The loaded model answered all along, through the outage too.
    assert during["infer"] and set(during["infer"]) == {"OK"}, during["infer"]
    assert set(during["predict_full"]) == {"OK"}, during["predict_full"]
    assert in_outage == {champion}, in_outage
    # A lookup is UNAVAILABLE while the store restarts, and answered on defaults
    # (named in defaults_applied) by the restarted, empty store until the replay.
    lookups = set(during["predict_lookup"]) | set(before_replay)
    assert lookups <= {"OK", "OK_DEFAULTS", "UNAVAILABLE"}, lookups
    assert set(served) <= {champion, other}
    for name in KEPT:
        assert statuses[name].pid == pids_before[name], f"{name} was restarted"
    assert all(status.ready for status in statuses.values()), statuses
    assert not letters_before and not dead_letters, [
        r.value[:200] for r in letters_before + dead_letters
    ]


async def _equals(value: Any, expected: Any) -> bool:
    return bool(await value == expected)
