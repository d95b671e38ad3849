"""The supervisor restarts a service that dies and stops everything it started."""

from __future__ import annotations

import asyncio
import io
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from driftloop_cli.status import collect
from driftloop_cli.supervisor import Supervisor, pid_alive
from driftloop_core.broker import free_port
from driftloop_core.services import ServiceSpec
from driftloop_core.settings import load_settings
from rich.console import Console

pytestmark = pytest.mark.e2e

SUPPORT = Path(__file__).parent / "support"


async def wait_for(condition: Callable[[], Awaitable[bool]], timeout_s: float = 60) -> None:
    """Poll a condition on other processes (nothing here can signal us)."""
    async with asyncio.timeout(timeout_s):
        while True:
            if await condition():
                return
            await asyncio.sleep(0.2)


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
        await wait_for(all_ready)
        first_pid = supervisor.pids()["dummy"]
        assert first_pid is not None
        os.kill(first_pid, signal.SIGKILL)

        async def restarted() -> bool:
            pid = supervisor.pids()["dummy"]
            return pid not in (None, first_pid) and await all_ready()

        await wait_for(restarted)
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
