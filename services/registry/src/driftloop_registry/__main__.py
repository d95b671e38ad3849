"""`python -m driftloop_registry`: settings, telemetry, bootstrap, serve until a signal.

SIGTERM or SIGINT turns health NOT_SERVING, lets the consumer finish and commit
the record in hand, lets in-flight gRPC calls end, then exits 0.
"""

from __future__ import annotations

import sys

from driftloop_core.runtime import run_service
from driftloop_core.settings import load_settings

from driftloop_registry.bootstrap import RegistryService
from driftloop_registry.config import load_registry_settings


def main() -> int:
    settings = load_settings().for_service("registry")
    service = RegistryService(settings, load_registry_settings(), settings.endpoints.registry)
    return run_service(settings, service.run_until_signal)


if __name__ == "__main__":
    sys.exit(main())
