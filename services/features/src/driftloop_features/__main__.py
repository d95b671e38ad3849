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


async def serve(settings: Settings, featureset: FeatureSet) -> int:
    # Built inside the running loop: the Faust app binds to it.
    return await build(settings, featureset).run_until_signal()


def main() -> int:
    settings = load_settings().for_service("features")
    return run_with_featureset(settings, lambda featureset: serve(settings, featureset))


if __name__ == "__main__":
    sys.exit(main())
