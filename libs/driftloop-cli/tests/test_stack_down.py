"""With the stack down, every command that calls a service says which service
is not answering where and how to start it, not gRPC's connection text."""

from __future__ import annotations

from pathlib import Path

import pytest
from driftloop_cli.main import app
from driftloop_core.broker import free_port
from typer.testing import CliRunner


@pytest.mark.parametrize(
    ("service", "args"),
    [
        ("registry", ["models", "list"]),
        ("features", ["features", "get", "c1"]),
        ("inference", ["predict", "payments", "--entity", "c1"]),
        ("ingestion", ["ingest", "EVENTS"]),
    ],
)
def test_a_service_that_is_not_running_is_named_with_how_to_start_it(
    service: str, args: list[str], tmp_path: Path
) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text('{"event_id": "e1", "customer_id": "c1"}\n')
    target = f"127.0.0.1:{free_port()}"  # nothing listens there
    argv = [str(events) if arg == "EVENTS" else arg for arg in args]

    result = CliRunner().invoke(
        app, [*argv, "--endpoint", target], env={"DRIFTLOOP_HOME": str(tmp_path / "home")}
    )

    assert result.exit_code == 1, result.output
    said = " ".join(result.output.split())
    assert f"the {service} service is not answering at {target}" in said, said
    assert "driftloop up" in said
    assert f"DRIFTLOOP_ENDPOINTS__{service.upper()}" in said
    assert "failed to connect to all addresses" not in said
