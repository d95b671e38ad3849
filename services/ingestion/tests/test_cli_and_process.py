"""What an operator runs: `driftloop ingest FILE` and `python -m driftloop_ingestion`."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
from driftloop_core.broker import free_port
from driftloop_core.settings import Settings
from driftloop_ingestion.bootstrap import IngestionService
from driftloop_ingestion.config import IngestionSettings
from driftloop_testing import health
from grpc_health.v1 import health_pb2

pytestmark = pytest.mark.integration


async def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run `driftloop` as a separate process, leaving this event loop free to serve."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "driftloop_cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def write_events(path: Path, unique: str, now_ms: int) -> Path:
    def obs(n: int, **changes: Any) -> str:
        body = {
            "event_id": f"{unique}-{n}",
            "customer_id": "c1",
            "ts": now_ms,
            "amount": 1.5,
            "channel": "web",
            "hour": 2,
            **changes,
        }
        return json.dumps(body)

    path.write_text(
        "\n".join(
            [
                obs(1),
                "",  # blank lines are skipped but still counted as lines
                obs(2, channel="bike"),
                obs(3),
                "{oops",
                obs(1),  # a duplicate
                json.dumps({"event_id": f"{unique}-3", "is_fraud": 1}),
            ]
        )
        + "\n"
    )
    return path


async def test_cli_reports_counts_and_rejections_by_line(
    service: IngestionService, unique: str, now_ms: int, tmp_path: Path
) -> None:
    events = write_events(tmp_path / "events.jsonl", unique, now_ms)
    code, out, _ = await run_cli("ingest", str(events), "--endpoint", service.endpoint, "--json")
    assert code == 0
    report = json.loads(out)
    assert {k: report[k] for k in ("accepted", "rejected", "duplicates", "published")} == {
        "accepted": 4,
        "rejected": 2,
        "duplicates": 1,
        "published": 3,
    }
    assert [(r["line"], r["index"], r["field"], r["rule"]) for r in report["rejections"]] == [
        (3, 1, "channel", "category"),
        (5, 3, "", "json"),
    ]
    assert report["rejections"][0]["event_id"] == f"{unique}-2"
    assert report["rejections"][0]["reason"].startswith("channel: must be one of web, pos, atm")

    # Human output: the same facts, and still exit 0 (the stream completed).
    code, out, _ = await run_cli("ingest", str(events), "--endpoint", service.endpoint)
    assert code == 0
    assert "accepted 4 (published 0, duplicates 4), rejected 2" in out
    assert "channel: must be one of web, pos, atm" in out


async def test_cli_fails_when_ingestion_is_unreachable(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text('{"event_id": "x"}\n')
    code, _, err = await run_cli("ingest", str(events), "--endpoint", f"127.0.0.1:{free_port()}")
    assert code == 1
    assert "UNAVAILABLE" in err
    code, _, err = await run_cli("ingest", str(tmp_path / "missing.jsonl"))
    assert code == 2 and "no such file" in err


async def test_service_process_serves_consumes_and_stops_on_sigterm(
    settings: Settings,
    config: IngestionSettings,
    topics: None,
    kafka_io: Any,
    unique: str,
    now_ms: int,
    tmp_path: Path,
) -> None:
    endpoint = f"127.0.0.1:{free_port()}"
    env = {
        **os.environ,
        "DRIFTLOOP_HOME": str(tmp_path / "home"),
        "DRIFTLOOP_KAFKA_BOOTSTRAP": settings.kafka.bootstrap_servers,
        "DRIFTLOOP_ENDPOINTS__INGESTION": endpoint,
        "DRIFTLOOP_INGESTION_SOURCE_TOPIC": config.source_topic,
        "DRIFTLOOP_INGESTION_DEADLETTER_TOPIC": config.deadletter_topic,
        "DRIFTLOOP_INGESTION_GROUP_ID": config.group_id,
    }
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    log = (tmp_path / "ingestion.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "driftloop_ingestion", env=env, stdout=log, stderr=log
    )
    try:
        async with asyncio.timeout(20):
            while await health(endpoint) != health_pb2.HealthCheckResponse.SERVING:
                assert process.returncode is None, (tmp_path / "ingestion.log").read_text()
                await asyncio.sleep(0.1)

        # gRPC through the CLI, and a raw record through the process's consumer.
        events = write_events(tmp_path / "events.jsonl", unique, now_ms)
        code, out, _ = await run_cli("ingest", str(events), "--endpoint", endpoint, "--json")
        assert code == 0 and json.loads(out)["published"] == 3
        raw = {
            "event_id": f"{unique}-raw",
            "customer_id": "c5",
            "ts": now_ms,
            "amount": 0,
            "channel": "atm",
            "hour": 0,
        }
        await kafka_io.produce_lines(config.source_topic, [json.dumps(raw).encode()])
        [record] = await kafka_io.read_valid(f"{unique}-raw", at_least=1, quiet_s=0)
        assert record.key == "c5"
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            code = await process.wait()
        log.close()
    output = (tmp_path / "ingestion.log").read_text()
    assert code == 0, output
    assert '"event": "ingestion_signal_received"' in output
    assert '"event": "ingestion_stopped"' in output
    assert (tmp_path / "home" / "ingestion" / "events.db").exists()
