"""How `driftloop up` runs the feature store."""

from driftloop_core.services import ServiceSpec

# The table store under DRIFTLOOP_HOME/ephemeral and its changelog offsets mirror
# the broker: after the embedded broker restarts empty, the store starts over too.
# `driftloop up --scale features=N` runs N workers splitting the partitions
# (see driftloop_features.config and driftloop_features.routing).
SERVICE = ServiceSpec(
    name="features",
    module="driftloop_features",
    order=10,
    restart_with_broker=True,
    scale_env_prefix="DRIFTLOOP_FEATURES_",
)
