"""What every service's `__main__` does first: settings, feature set, telemetry."""

from __future__ import annotations

from driftloop_core.featureset import FeatureSet, default_featureset_path, load_featureset
from driftloop_core.settings import Settings


def featureset_for(settings: Settings) -> FeatureSet:
    """The feature set named by `DRIFTLOOP_FEATURESET`, else the built-in payments set."""
    return load_featureset(settings.featureset or default_featureset_path())
