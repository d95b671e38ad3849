"""`python -m driftloop_drift`: settings, telemetry, bootstrap, run until a signal.

SIGTERM or SIGINT turns health NOT_SERVING, lets the batch in hand finish,
saves the state with its offsets and exits 0. A consumer that cannot go on
exits 1 and `driftloop up` restarts the process, which resumes from the saved
state and offsets.
"""

from __future__ import annotations

import sys

from driftloop_core.featureset import FeatureSet
from driftloop_core.logging import get_logger
from driftloop_core.runtime import run_with_featureset
from driftloop_core.settings import Settings, load_settings
from pydantic import ValidationError

from driftloop_drift.bootstrap import build
from driftloop_drift.config import load_drift_settings

log = get_logger("driftloop_drift")


async def serve(settings: Settings, featureset: FeatureSet) -> int:
    try:
        config = load_drift_settings()
    except ValidationError as error:
        log.error("drift_settings_invalid", error=str(error))
        return 2
    return await build(settings, featureset, config).run_until_signal()


def main() -> int:
    settings = load_settings().for_service("drift")
    return run_with_featureset(settings, lambda featureset: serve(settings, featureset))


if __name__ == "__main__":
    sys.exit(main())
