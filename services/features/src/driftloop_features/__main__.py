"""`python -m driftloop_features`: settings -> telemetry -> bootstrap -> run until a signal."""

from __future__ import annotations

import asyncio
import signal

from driftloop_core.runtime import featureset_for
from driftloop_core.settings import load_settings
from driftloop_core.telemetry import init_telemetry, serve_metrics

from driftloop_features.bootstrap import FeatureStore


async def main() -> None:
    settings = load_settings().for_service("features")
    telemetry = init_telemetry(settings)
    serve_metrics(settings)
    store = FeatureStore(settings, featureset_for(settings), settings.endpoints.features)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await store.start()
    try:
        await stop.wait()
    finally:
        await store.stop()
        telemetry.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
