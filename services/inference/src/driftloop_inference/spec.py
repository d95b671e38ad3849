"""How `driftloop up` runs the inference service."""

from driftloop_core.services import ServiceSpec

SERVICE = ServiceSpec(name="inference", module="driftloop_inference", order=50)
