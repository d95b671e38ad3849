"""How `driftloop up` runs the ingestion service."""

from driftloop_core.services import ServiceSpec

SERVICE = ServiceSpec(name="ingestion", module="driftloop_ingestion", order=20)
