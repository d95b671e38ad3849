"""`python -m driftloop_ingestion`: settings, telemetry, bootstrap, run until a signal.

SIGTERM or SIGINT turns health NOT_SERVING, lets the consumer finish and commit
its batch, lets in-flight gRPC calls end, then exits 0. A consumer that cannot
go on (the broker refuses a batch after every retry) exits 1, and `driftloop
up` restarts the process; the uncommitted batch is read again.
"""

from __future__ import annotations

import asyncio
import sys

from driftloop_core.featureset import FeatureSet
from driftloop_core.logging import get_logger
from driftloop_core.runtime import featureset_or_none
from driftloop_core.settings import Settings, load_settings
from driftloop_core.telemetry import init_telemetry, serve_metrics

from driftloop_ingestion.bootstrap import build, tune_gc
from driftloop_ingestion.config import IngestionSettings, load_ingestion_settings

log = get_logger("driftloop_ingestion")


async def serve(settings: Settings, featureset: FeatureSet, config: IngestionSettings) -> int:
    service = build(settings, featureset, config)
    tune_gc()
    return await service.run_until_signal()


def main() -> int:
    settings = load_settings().for_service("ingestion")
    telemetry = init_telemetry(settings)
    serve_metrics(settings)
    featureset = featureset_or_none(settings)
    if featureset is None:
        return 2
    config = load_ingestion_settings()
    try:
        return asyncio.run(serve(settings, featureset, config))
    finally:
        telemetry.shutdown()


if __name__ == "__main__":
    sys.exit(main())
