"""The core consumer and publisher across a restart of the embedded broker.

The broker restarts between a record being handled and its offset being
committed: the new, empty broker knows no group, so the commit is refused. The
consumer must go on (rejoin and handle what comes next) instead of ending its
loop, which would cost its service a process restart.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
from driftloop_core.broker import EmbeddedBroker, free_port
from driftloop_core.kafka import ConsumerLoop, Publisher, Record, Topics, TopicSpec, ensure_topics
from driftloop_core.settings import load_settings

pytestmark = pytest.mark.integration


async def test_consumer_goes_on_when_its_commit_meets_a_restarted_broker(tmp_path: Path) -> None:
    os.environ.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    topics = [TopicSpec("restarted", 1), TopicSpec(Topics.DEADLETTER, 1)]
    async with EmbeddedBroker(free_port(), log_file=tmp_path / "broker.log") as broker:
        settings = load_settings(
            home=tmp_path / "home", kafka_bootstrap=broker.bootstrap, service_name="test"
        )
        await ensure_topics(settings.kafka, topics)
        handled: list[bytes] = []
        restarted = asyncio.Event()

        async def handler(record: Record) -> None:
            handled.append(record.value)
            if record.value == b"before":
                # The broker dies with this record in hand and comes back empty.
                assert broker.pid is not None
                os.kill(broker.pid, signal.SIGKILL)
                await broker.exited()
                broker.start()
                await broker.wait_ready()
                await ensure_topics(settings.kafka, topics)
                restarted.set()

        async with Publisher(settings) as publisher:
            consumer = ConsumerLoop(
                settings,
                topics=["restarted"],
                group_id="restarted",
                handle=handler,
                publisher=publisher,
            )
            await consumer.start()
            running = asyncio.create_task(consumer.run())
            try:
                await publisher.publish("restarted", b"before", key="k", ce_type="test.v1")
                async with asyncio.timeout(60):
                    await restarted.wait()
                    await publisher.publish("restarted", b"after", key="k", ce_type="test.v1")
                    while b"after" not in handled:
                        assert not running.done(), running.exception()
                        await asyncio.sleep(0.1)
            finally:
                consumer.request_stop()
                await running
                await consumer.stop()
        assert handled == [b"before", b"after"]
