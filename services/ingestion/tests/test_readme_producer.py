"""The README's `produce.py`, run as written against the test broker: a JSON-lines
file (observations, and labels before them) reaches ingestion and flows."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from driftloop.v1 import events_pb2
from driftloop_core.settings import Settings
from driftloop_ingestion.config import IngestionSettings

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[3] / "README.md"


def readme_producer() -> str:
    """The README's Python block that starts with `# produce.py`."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    [script] = [block for block in blocks if block.startswith("# produce.py")]
    return script


async def test_the_readme_producer_runs_as_written(
    start_service: Any,
    settings: Settings,
    config: IngestionSettings,
    kafka_io: Any,
    unique: str,
    now_ms: int,
    tmp_path: Path,
) -> None:
    script = tmp_path / "produce.py"
    script.write_text(readme_producer())
    events = tmp_path / "events.jsonl"
    bodies = [{"event_id": f"{unique}-{n}", "is_fraud": 1} for n in range(5)]
    bodies += [
        {
            "event_id": f"{unique}-{n}",
            "customer_id": f"c{n}",
            "ts": now_ms - 1000,
            "amount": 1.5,
            "channel": "pos",
            "hour": 2,
        }
        for n in range(5)
    ]
    events.write_text("\n".join(json.dumps(body) for body in bodies) + "\n\n")
    service = await start_service()

    run = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        str(events),
        env={
            **os.environ,
            "DRIFTLOOP_KAFKA_BOOTSTRAP": settings.kafka.bootstrap_servers,
            "DRIFTLOOP_RAW_TOPIC": config.source_topic,
        },
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(run.communicate(), 60)
    assert run.returncode == 0, stderr.decode()

    assert service.consumer is not None
    async with asyncio.timeout(60):
        await service.consumer.wait_handled(len(bodies))
    records = await kafka_io.read_valid(f"{unique}-", at_least=10)
    kinds = sorted((type(r.message).__name__, r.message.event_id) for r in records)
    assert kinds == sorted(
        (kind, f"{unique}-{n}") for kind in ("Label", "Observation") for n in range(5)
    )
    labels = [r.message for r in records if isinstance(r.message, events_pb2.Label)]
    assert {(m.event_id, m.entity_id) for m in labels} == {
        (f"{unique}-{n}", f"c{n}") for n in range(5)
    }
    letters = await kafka_io.read_topic(config.deadletter_topic, lambda r: True, at_least=0)
    assert letters == []
