"""How `driftloop up` runs the trainer."""

from driftloop_core.services import ServiceSpec

SERVICE = ServiceSpec(name="trainer", module="driftloop_trainer", order=40)
