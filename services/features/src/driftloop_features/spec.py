"""How `driftloop up` runs the feature store."""

from driftloop_core.services import ServiceSpec

# The table store under DRIFTLOOP_HOME/ephemeral and its changelog offsets mirror
# the broker: after the embedded broker restarts empty, the store starts over too.
SERVICE = ServiceSpec(
    name="features", module="driftloop_features", order=10, restart_with_broker=True
)
