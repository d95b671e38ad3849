"""`python -m driftloop_features`: settings -> telemetry -> bootstrap -> run until a signal.

Exits 0 after SIGTERM or SIGINT and a clean stop, 2 when the feature set is invalid.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from driftloop_core.featureset import FeatureSet
from driftloop_core.runtime import run_with_featureset
from driftloop_core.settings import Settings, load_settings

from driftloop_features.bootstrap import FeatureStore


async def serve(settings: Settings, featureset: FeatureSet) -> None:
    store = FeatureStore(settings, featureset, settings.endpoints.features)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await store.start()
    try:
        await stop.wait()
    finally:
        await store.stop()


def main() -> int:
    settings = load_settings().for_service("features")
    return run_with_featureset(settings, lambda featureset: serve(settings, featureset))


if __name__ == "__main__":
    sys.exit(main())
