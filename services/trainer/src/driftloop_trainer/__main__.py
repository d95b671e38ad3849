"""`python -m driftloop_trainer`: settings, telemetry, bootstrap, run until a signal.

SIGTERM or SIGINT turns health NOT_SERVING, lets the run in hand finish and its
offset commit, then exits 0. A consumer that cannot go on exits 1 and `driftloop
up` restarts the process; the uncommitted request is read again, and the
ledger of finished requests keeps it from training twice.
"""

from __future__ import annotations

import asyncio
import sys

from driftloop_core.logging import get_logger
from driftloop_core.runtime import featureset_or_none
from driftloop_core.settings import load_settings
from driftloop_core.telemetry import init_telemetry, serve_metrics

from driftloop_trainer.bootstrap import build
from driftloop_trainer.config import TrainerSettings
from driftloop_trainer.handlers import code_version

log = get_logger("driftloop_trainer")


def main() -> int:
    settings = load_settings().for_service("trainer", code_version().rsplit(" ", 1)[-1])
    telemetry = init_telemetry(settings)
    serve_metrics(settings)
    featureset = featureset_or_none(settings)
    if featureset is None:
        return 2

    try:
        config = TrainerSettings().training_config()
    except ValueError as error:
        log.error("trainer_settings_invalid", error=str(error))
        return 2

    async def serve() -> int:
        return await build(settings, featureset, config=config).run_until_signal()

    try:
        return asyncio.run(serve())
    finally:
        telemetry.shutdown()


if __name__ == "__main__":
    sys.exit(main())
