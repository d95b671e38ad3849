"""The environment of one private Driftloop stack for an end-to-end test.

Every endpoint gets a free port and state lives under the test's own folder, so
end-to-end tests can run side by side (pytest-xdist) without meeting each other.
"""

from __future__ import annotations

import json
import os
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
