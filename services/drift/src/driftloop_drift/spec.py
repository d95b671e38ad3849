"""How `driftloop up` runs the drift service."""

from driftloop_core.services import ServiceSpec

# Its state is saved with the offsets it reflects (DRIFTLOOP_HOME/ephemeral): after
# the embedded broker restarts empty, those offsets mean nothing and it starts over.
SERVICE = ServiceSpec(name="drift", module="driftloop_drift", order=60, restart_with_broker=True)
