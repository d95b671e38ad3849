"""`python -m driftloop_features`: settings -> telemetry -> bootstrap -> run until a signal.

Exits 0 after SIGTERM or SIGINT and a clean stop, 2 when the feature set is
invalid, 1 when the offline sink or the Faust agent cannot go on (`driftloop
up` restarts it; what was not committed is read again).
"""

from __future__ import annotations

import sys

from driftloop_core.featureset import FeatureSet
from driftloop_core.runtime import run_with_featureset
from driftloop_core.settings import Settings, load_settings

from driftloop_features.bootstrap import build
from driftloop_features.config import FeaturesSettings, load_features_settings


async def serve(settings: Settings, config: FeaturesSettings, featureset: FeatureSet) -> int:
    # Built inside the running loop: the Faust app binds to it.
    return await build(settings, featureset, config=config).run_until_signal()


def main() -> int:
    settings = load_settings().for_service("features")
    config = load_features_settings()
    # Workers sharing a machine share the /metrics port too: the first serves it.
    return run_with_featureset(
        settings,
        lambda featureset: serve(settings, config, featureset),
        metrics=config.worker == 0,
    )


if __name__ == "__main__":
    sys.exit(main())
