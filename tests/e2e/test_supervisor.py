"""The supervisor restarts a service (or the embedded broker) that dies and stops
everything it started."""

from __future__ import annotations

import asyncio
import io
import os
import signal
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from driftloop_cli.status import ServiceStatus, collect
from driftloop_cli.supervisor import Supervisor, pid_alive, read_state
from driftloop_core.broker import free_port
from driftloop_core.kafka import Topics
from driftloop_core.services import ServiceSpec
from driftloop_core.settings import load_settings
from driftloop_testing import eventually
from rich.console import Console

pytestmark = pytest.mark.e2e

SUPPORT = Path(__file__).parent / "support"


async def test_a_killed_service_is_reported_and_restarted(tmp_path: Path) -> None:
    port = free_port()
    endpoint = f"127.0.0.1:{free_port()}"
    os.environ.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    settings = load_settings(
        home=tmp_path / "home",
        kafka_bootstrap=f"127.0.0.1:{port}",
        endpoints={"broker_port": port, "drift": endpoint},
    )
    spec = ServiceSpec(
        name="dummy",
        module="dummy_service",
        endpoint_key="drift",
        env={
            "PYTHONPATH": os.pathsep.join([str(SUPPORT), os.environ.get("PYTHONPATH", "")]),
            "DUMMY_ENDPOINT": endpoint,
        },
    )
    output = io.StringIO()
    supervisor = Supervisor(settings, [spec], console=Console(file=output, width=200))
    running = asyncio.create_task(supervisor.run())

    async def all_ready() -> bool:
        statuses = await collect(settings)
        return len(statuses) == 2 and all(s.ready for s in statuses)

    try:
        await eventually(all_ready, 60, "every service ready")
        first_pid = supervisor.pids()["dummy"]
        assert first_pid is not None
        os.kill(first_pid, signal.SIGKILL)

        async def restarted() -> bool:
            pid = supervisor.pids()["dummy"]
            return pid not in (None, first_pid) and await all_ready()

        await eventually(restarted, 60, "the killed service restarted")
        assert "exited with code -9" in output.getvalue()
        statuses = {s.name: s for s in await collect(settings)}
        assert statuses["dummy"].pid == supervisor.pids()["dummy"]
        assert statuses["dummy"].endpoint == endpoint
    finally:
        supervisor.stop()
        assert await asyncio.wait_for(running, 40) == 0

    second_pid = supervisor.pids()["dummy"]
    assert not pid_alive(second_pid)
    assert "dummy" in output.getvalue() and "stopped" in output.getvalue()
    assert not any(s.ready for s in await collect(settings))


async def test_a_killed_broker_is_restarted_with_its_topics_and_the_services_mirroring_it(
    tmp_path: Path,
) -> None:
    """The embedded broker dies: the supervisor says so, stops the services whose
    state mirrors it, clears DRIFTLOOP_HOME/ephemeral, starts a new (empty) broker
    on the same port with every topic, then those services again; a service that
    does not mirror the broker keeps its process."""
    port = free_port()
    endpoints = {"mirror": f"127.0.0.1:{free_port()}", "keeper": f"127.0.0.1:{free_port()}"}
    os.environ.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    settings = load_settings(
        home=tmp_path / "home",
        kafka_bootstrap=f"127.0.0.1:{port}",
        endpoints={
            "broker_port": port,
            "drift": endpoints["mirror"],
            "trainer": endpoints["keeper"],
        },
    )
    pythonpath = os.pathsep.join([str(SUPPORT), os.environ.get("PYTHONPATH", "")])
    specs = [
        ServiceSpec(
            name=name,
            module="dummy_service",
            endpoint_key=key,
            env={"PYTHONPATH": pythonpath, "DUMMY_ENDPOINT": endpoints[name]},
            restart_with_broker=name == "mirror",
        )
        for name, key in (("mirror", "drift"), ("keeper", "trainer"))
    ]
    output = io.StringIO()
    supervisor = Supervisor(settings, specs, console=Console(file=output, width=300))
    running = asyncio.create_task(supervisor.run())

    async def statuses() -> dict[str, ServiceStatus]:
        return {s.name: s for s in await collect(settings)}

    async def all_ready() -> bool:
        found = await statuses()
        return len(found) == 3 and all(s.ready for s in found.values())

    try:
        await eventually(all_ready, 60, "every service ready")
        before = await statuses()
        state = read_state(settings)
        assert state is not None
        cluster_before = state["services"][0]["cluster_id"]
        leftover = settings.ephemeral_dir / "mirror" / "state"
        leftover.parent.mkdir(parents=True)
        leftover.write_text("derived from the old broker's topics")
        broker_pid = before["broker"].pid
        assert broker_pid is not None
        os.kill(broker_pid, signal.SIGKILL)

        async def restarted() -> bool:
            found = await statuses()
            return (
                await all_ready()
                and found["broker"].pid != broker_pid
                and found["mirror"].pid != before["mirror"].pid
            )

        await eventually(restarted, 60, "the killed service restarted")
        after = await statuses()
        assert after["keeper"].pid == before["keeper"].pid
        assert not leftover.exists()
        state = read_state(settings)
        assert state is not None
        broker_entry = state["services"][0]
        assert broker_entry["restarts"] == 1
        assert broker_entry["cluster_id"] not in (None, cluster_before)
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
        await admin.start()
        try:
            assert set(Topics.all()) <= set(await admin.list_topics())
        finally:
            await admin.close()
        text = output.getvalue()
        assert "broker | exited with code -9" in text
        assert "mirror | stopped for the new broker" in text
        assert "keeper | stopped for the new broker" not in text
    finally:
        supervisor.stop()
        assert await asyncio.wait_for(running, 40) == 0
    assert not any(s.ready for s in await collect(settings))
