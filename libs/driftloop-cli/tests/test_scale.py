"""`driftloop up --scale NAME=N`: N processes of a service that can share its
work, each told its place; a service that cannot is refused, by name."""

from __future__ import annotations

import pytest
from driftloop_cli.main import scaled_services
from driftloop_core.services import ServiceSpec
from driftloop_core.settings import Settings

FEATURES = ServiceSpec("features", "driftloop_features", scale_env_prefix="DRIFTLOOP_FEATURES_")
REGISTRY = ServiceSpec("registry", "driftloop_registry")


def test_scaled_workers_share_the_endpoint_and_know_their_place() -> None:
    specs = scaled_services([FEATURES, REGISTRY], ["features=3"])
    assert [spec.name for spec in specs] == ["features", "features-2", "features-3", "registry"]
    settings = Settings()
    assert {spec.endpoint(settings) for spec in specs[:3]} == {settings.endpoints.features}
    assert [spec.env["DRIFTLOOP_FEATURES_WORKER"] for spec in specs[:3]] == ["0", "1", "2"]
    assert all(spec.env["DRIFTLOOP_FEATURES_REUSE_PORT"] == "1" for spec in specs[:3])
    assert specs[3] is REGISTRY


def test_one_process_is_the_service_as_it_was() -> None:
    assert scaled_services([FEATURES], ["features=1"]) == [FEATURES]


@pytest.mark.parametrize(
    ("scale", "message"),
    [
        (["registry=2"], "registry runs as one process"),
        (["nope=2"], "unknown services ['nope']"),
        (["features"], "expected NAME=N"),
        (["features=0"], "at least 1 process"),
    ],
)
def test_what_cannot_be_scaled_is_refused_by_name(scale: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        scaled_services([FEATURES, REGISTRY], scale)
