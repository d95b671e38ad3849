"""How `driftloop up` runs the model registry."""

from driftloop_core.services import ServiceSpec

SERVICE = ServiceSpec(name="registry", module="driftloop_registry", order=30)
