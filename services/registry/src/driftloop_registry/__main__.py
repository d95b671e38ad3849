"""`python -m driftloop_registry`: settings, telemetry, bootstrap, serve until a signal.

SIGTERM or SIGINT turns health NOT_SERVING, lets the consumer finish and commit
the record in hand, lets in-flight gRPC calls end, then exits 0.
"""

from __future__ import annotations

import asyncio
import sys

from driftloop_core.settings import load_settings
from driftloop_core.telemetry import init_telemetry, serve_metrics

from driftloop_registry.bootstrap import RegistryService
from driftloop_registry.config import load_registry_settings


def main() -> int:
    settings = load_settings().for_service("registry")
    telemetry = init_telemetry(settings)
    serve_metrics(settings)
    service = RegistryService(settings, load_registry_settings(), settings.endpoints.registry)
    try:
        return asyncio.run(service.run_until_signal())
    finally:
        telemetry.shutdown()


if __name__ == "__main__":
    sys.exit(main())
