"""The environment of one private Driftloop stack for an end-to-end test.

Every endpoint gets a free port and state lives under the test's own folder, so
end-to-end tests can run side by side (pytest-xdist) without meeting each other.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from driftloop_core.broker import free_port
from driftloop_core.settings import Endpoints


def stack_env(home: Path, **extra: str) -> dict[str, str]:
    """os.environ plus DRIFTLOOP_HOME and a free port for the broker and every service."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("DRIFTLOOP_")}
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    port = free_port()
    env["DRIFTLOOP_HOME"] = str(home)
    env["DRIFTLOOP_ENDPOINTS__BROKER_PORT"] = str(port)
    env["DRIFTLOOP_KAFKA_BOOTSTRAP"] = f"127.0.0.1:{port}"
    for name, field in Endpoints.model_fields.items():
        if field.annotation is str:
            env[f"DRIFTLOOP_ENDPOINTS__{name.upper()}"] = f"127.0.0.1:{free_port()}"
    metrics = {name: free_port() for name in Endpoints().metrics}
    env["DRIFTLOOP_ENDPOINTS__METRICS"] = json.dumps(metrics)
    env.update(extra)
    return env


DRIFTLOOP = [sys.executable, "-m", "driftloop_cli"]


def run_json(env: dict[str, str], *args: str) -> tuple[int, dict[str, object]]:
    """`driftloop ARGS --json` against the stack: its exit code and its document."""
    done = subprocess.run(
        [*DRIFTLOOP, *args, "--json"], env=env, capture_output=True, text=True, timeout=30
    )
    try:
        return done.returncode, json.loads(done.stdout)
    except json.JSONDecodeError:
        return done.returncode, {"stdout": done.stdout, "stderr": done.stderr}


def pids(env: dict[str, str]) -> dict[str, object]:
    """`driftloop status`: (pid, ready) by service, and `_all_ready`."""
    code, report = run_json(env, "status")
    services = report.get("services", [])
    assert isinstance(services, list)
    return {s["name"]: (s["pid"], s["ready"]) for s in services} | {"_all_ready": code == 0}
