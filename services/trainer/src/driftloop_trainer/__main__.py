"""`python -m driftloop_trainer`: settings, telemetry, bootstrap, run until a signal.

SIGTERM or SIGINT turns health NOT_SERVING, lets the run in hand finish and its
offset commit, then exits 0. A consumer that cannot go on exits 1 and `driftloop
up` restarts the process; the uncommitted request is read again, and the
ledger of finished requests keeps it from training twice.
"""

from __future__ import annotations

import sys

from driftloop_core.featureset import FeatureSet
from driftloop_core.logging import get_logger
from driftloop_core.runtime import run_with_featureset
from driftloop_core.settings import Settings, load_settings

from driftloop_trainer.bootstrap import build
from driftloop_trainer.config import TrainerSettings
from driftloop_trainer.handlers import code_version

log = get_logger("driftloop_trainer")


async def serve(settings: Settings, featureset: FeatureSet) -> int:
    try:
        trainer_settings = TrainerSettings()
        config = trainer_settings.training_config()
    except ValueError as error:
        log.error("trainer_settings_invalid", error=str(error))
        return 2
    service = build(settings, featureset, config=config, window_wait=trainer_settings.window_wait())
    return await service.run_until_signal()


def main() -> int:
    settings = load_settings().for_service("trainer", code_version().rsplit(" ", 1)[-1])
    return run_with_featureset(settings, lambda featureset: serve(settings, featureset))


if __name__ == "__main__":
    sys.exit(main())
