"""How `driftloop up` runs the drift service."""

from driftloop_core.services import ServiceSpec

SERVICE = ServiceSpec(name="drift", module="driftloop_drift", order=60)
