"""`driftloop up` (external broker) and `driftloop status` check the broker with
the configured Kafka security, not in plaintext regardless."""

from __future__ import annotations

import pytest
from driftloop_core.broker import EmbeddedBroker, broker_ready
from driftloop_core.settings import Settings

pytestmark = pytest.mark.integration


async def test_broker_readiness_speaks_the_configured_security_protocol(
    broker: EmbeddedBroker, settings: Settings
) -> None:
    assert await broker_ready(broker.bootstrap, timeout_s=5, kafka=settings.kafka)
    # The embedded broker speaks plaintext only: a TLS client cannot reach it,
    # which shows the SSL setting was used.
    over_tls = settings.kafka.model_copy(update={"security_protocol": "SSL"})
    assert not await broker_ready(broker.bootstrap, timeout_s=2, kafka=over_tls)
