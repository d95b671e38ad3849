"""`python -m driftloop_ingestion`: settings, telemetry, bootstrap, run until a signal.

SIGTERM or SIGINT turns health NOT_SERVING, lets the consumer finish and commit
its batch, lets in-flight gRPC calls end, then exits 0. A consumer that cannot
go on (the broker refuses a batch after every retry) exits 1, and `driftloop
up` restarts the process; the uncommitted batch is read again.
"""

from __future__ import annotations

import sys

from driftloop_core.featureset import FeatureSet
from driftloop_core.logging import get_logger
from driftloop_core.runtime import run_with_featureset
from driftloop_core.settings import Settings, load_settings

from driftloop_ingestion.bootstrap import build, tune_gc
from driftloop_ingestion.config import IngestionSettings, load_ingestion_settings

log = get_logger("driftloop_ingestion")


async def serve(settings: Settings, featureset: FeatureSet, config: IngestionSettings) -> int:
    service = build(settings, featureset, config)
    tune_gc()
    return await service.run_until_signal()


def main() -> int:
    settings = load_settings().for_service("ingestion")
    config = load_ingestion_settings()
    return run_with_featureset(settings, lambda featureset: serve(settings, featureset, config))


if __name__ == "__main__":
    sys.exit(main())
