"""`python -m driftloop_trainer` as `driftloop up` runs it: health on its endpoint,
requests consumed through the real feature-store client, a clean SIGTERM stop."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from driftloop.v1 import events_pb2
from driftloop_core.broker import free_port
from driftloop_core.kafka import Publisher, Topics, default_topic_specs, ensure_topics
from driftloop_core.settings import Settings
from driftloop_testing import health
from grpc_health.v1 import health_pb2

pytestmark = pytest.mark.integration


async def test_process_serves_health_fails_without_a_feature_store_and_stops_on_sigterm(
    settings: Settings, tmp_path: Path
) -> None:
    await ensure_topics(settings.kafka, default_topic_specs(settings.kafka))
    endpoint = f"127.0.0.1:{free_port()}"
    env = {
        **os.environ,
        "DRIFTLOOP_HOME": str(tmp_path / "home"),
        "DRIFTLOOP_KAFKA_BOOTSTRAP": settings.kafka.bootstrap_servers,
        "DRIFTLOOP_ENDPOINTS__TRAINER": endpoint,
        # Nothing listens there: the run must fail at load_data, not hang.
        "DRIFTLOOP_ENDPOINTS__FEATURES": f"127.0.0.1:{free_port()}",
        "DRIFTLOOP_ENDPOINTS__REGISTRY": f"127.0.0.1:{free_port()}",
    }
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    log_path = tmp_path / "trainer.log"
    failures = AIOKafkaConsumer(**settings.kafka.client_options(), group_id=None)
    await failures.start()
    await failures.topics()
    tps = [
        TopicPartition(Topics.TRAINING_FAILED, p)
        for p in failures.partitions_for_topic(Topics.TRAINING_FAILED) or ()
    ]
    failures.assign(tps)
    for tp, offset in (await failures.end_offsets(tps)).items():
        failures.seek(tp, offset)
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "driftloop_trainer", env=env, stdout=log, stderr=log
        )
        try:
            async with asyncio.timeout(30):
                while await health(endpoint) != health_pb2.HealthCheckResponse.SERVING:
                    assert process.returncode is None, log_path.read_text()
                    await asyncio.sleep(0.1)
            request_id = uuid.uuid4().hex
            async with Publisher(settings) as publisher:
                await publisher.publish_event(
                    events_pb2.TrainingRequested(request_id=request_id, model="payments"),
                    key="payments",
                )
            failed = None
            async with asyncio.timeout(40):
                while failed is None:
                    for messages in (await failures.getmany(timeout_ms=300)).values():
                        for message in messages:
                            event = events_pb2.TrainingFailed.FromString(message.value)
                            if event.request_id == request_id:
                                failed = event
            assert failed.stage == "load_data"
            assert "feature store" in failed.reason and "UNAVAILABLE" in failed.reason
        finally:
            await failures.stop()
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(20):
                code = await process.wait()
    output = log_path.read_text()
    assert code == 0, output
    assert '"event": "trainer_signal_received"' in output
    assert '"event": "trainer_stopped"' in output
