"""`driftloop up` and `driftloop status` as a user runs them: real processes."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from driftloop_core.broker import port_in_use
from driftloop_core.kafka import Topics
from support.stack import stack_env

# Readiness of every service takes ~17 s on a quiet machine; CI runs other
# suites beside it.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

DRIFTLOOP = [sys.executable, "-m", "driftloop_cli"]


def status(env: dict[str, str]) -> tuple[int, dict[str, object]]:
    done = subprocess.run(
        [*DRIFTLOOP, "status", "--json"], env=env, capture_output=True, text=True, timeout=30
    )
    return done.returncode, json.loads(done.stdout)


async def list_topics(bootstrap: str) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return list(await admin.list_topics())
    finally:
        await admin.close()


def test_up_reports_a_ready_broker_and_stops_cleanly(tmp_path: Path) -> None:
    env = stack_env(tmp_path / "home")
    port = int(env["DRIFTLOOP_ENDPOINTS__BROKER_PORT"])
    code, _ = status(env)
    assert code == 1, "status must fail while nothing runs"

    up = subprocess.Popen(
        [*DRIFTLOOP, "up"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 120
        code, report = status(env)
        while code != 0 and time.monotonic() < deadline and up.poll() is None:
            time.sleep(0.5)
            code, report = status(env)
        services = report["services"]
        assert isinstance(services, list)
        waiting = [service["name"] for service in services if not service["ready"]]
        assert code == 0, f"not ready after 120 s: {waiting}"
        broker = next(s for s in services if s["name"] == "broker")
        assert broker["ready"] is True
        assert broker["endpoint"] == f"127.0.0.1:{port}"
        assert isinstance(broker["pid"], int)
        topics = asyncio.run(list_topics(f"127.0.0.1:{port}"))
        assert set(Topics.all()) <= set(topics)
    finally:
        up.send_signal(signal.SIGTERM)
        output, _ = up.communicate(timeout=30)
    assert up.returncode == 0, output
    assert "broker" in output and "stopped" in output
    assert not port_in_use("127.0.0.1", port), "the broker outlived driftloop up"
    code, report = status(env)
    assert code == 1
