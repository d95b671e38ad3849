"""How `driftloop up` runs the ingestion service."""

from driftloop_core.services import ServiceSpec

# The event index says which event ids the broker holds: restarted on a new
# broker, ingestion reads its cluster id and publishes replayed events again.
SERVICE = ServiceSpec(
    name="ingestion", module="driftloop_ingestion", order=20, restart_with_broker=True
)
