"""`python -m driftloop_drift`: settings, telemetry, bootstrap, run until a signal.

SIGTERM or SIGINT turns health NOT_SERVING, lets the batch in hand finish,
saves the state with its offsets and exits 0. A consumer that cannot go on
exits 1 and `driftloop up` restarts the process, which resumes from the saved
state and offsets.
"""

from __future__ import annotations

import asyncio
import sys

from driftloop_core.logging import get_logger
from driftloop_core.runtime import featureset_or_none
from driftloop_core.settings import load_settings
from driftloop_core.telemetry import init_telemetry, serve_metrics
from pydantic import ValidationError

from driftloop_drift.bootstrap import DriftService
from driftloop_drift.config import load_drift_settings

log = get_logger("driftloop_drift")


def main() -> int:
    settings = load_settings().for_service("drift")
    telemetry = init_telemetry(settings)
    serve_metrics(settings)
    featureset = featureset_or_none(settings)
    if featureset is None:
        return 2
    try:
        config = load_drift_settings()
    except ValidationError as error:
        log.error("drift_settings_invalid", error=str(error))
        return 2
    service = DriftService(settings, featureset, config)
    try:
        return asyncio.run(service.run_until_signal())
    finally:
        telemetry.shutdown()


if __name__ == "__main__":
    sys.exit(main())
