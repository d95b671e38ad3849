"""How `driftloop up` runs the feature store."""

from driftloop_core.services import ServiceSpec

SERVICE = ServiceSpec(name="features", module="driftloop_features", order=10)
