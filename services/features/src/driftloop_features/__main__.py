"""`python -m driftloop_features`: settings -> telemetry -> bootstrap -> run until a signal.

Exits 0 after SIGTERM or SIGINT and a clean stop, 2 when the feature set is invalid.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from driftloop_core.featureset import FeatureSet
from driftloop_core.runtime import featureset_or_none
from driftloop_core.settings import Settings, load_settings
from driftloop_core.telemetry import init_telemetry, serve_metrics

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
    telemetry = init_telemetry(settings)
    serve_metrics(settings)
    featureset = featureset_or_none(settings)
    if featureset is None:
        return 2
    try:
        asyncio.run(serve(settings, featureset))
    finally:
        telemetry.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
