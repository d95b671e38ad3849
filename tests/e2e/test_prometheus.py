"""A real Prometheus server scrapes every service of `driftloop up` and finds the
series an SRE watches. The Debian `prometheus` package provides the server;
`.ci/run` installs it in CI, where its absence fails the test."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from driftloop_core.broker import free_port
from driftloop_testing import wait_until
from support.stack import stack_env

pytestmark = pytest.mark.e2e

DRIFTLOOP = [sys.executable, "-m", "driftloop_cli"]
SERVICES = ("ingestion", "features", "registry", "trainer", "inference", "drift")


def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        reason = "the prometheus server is not installed (Debian package prometheus)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}; .ci/run installs it")
        pytest.skip(reason)
    return found


def query(port: int, promql: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as reply:
        result: list[dict[str, Any]] = json.load(reply)["data"]["result"]
    return result


def wait_for(check: Any, timeout_s: float, what: str) -> Any:
    # The server may still be starting: a refused connection counts as "not yet".
    return wait_until(check, timeout_s, what, interval_s=1, tolerate=(OSError,))


async def produce(bootstrap: str, count: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        now = int(time.time() * 1000)
        for i in range(count):
            event = {
                "event_id": f"p-{i}",
                "customer_id": f"c-{i % 5}",
                "ts": now - 60_000 + i,
                "amount": 10.0 + i,
                "channel": "web",
                "hour": 12,
            }
            await producer.send("events.raw", json.dumps(event).encode())
        await producer.send("events.raw", b"{not json")
        await producer.flush()
    finally:
        await producer.stop()


def test_prometheus_scrapes_every_service_and_finds_the_key_series(tmp_path: Path) -> None:
    binary = prometheus_binary()
    env = stack_env(tmp_path / "home")
    metrics_ports = json.loads(env["DRIFTLOOP_ENDPOINTS__METRICS"])
    config = tmp_path / "prometheus.yml"
    config.write_text(
        json.dumps(  # JSON is YAML
            {
                "global": {"scrape_interval": "1s"},
                "scrape_configs": [
                    {
                        "job_name": "driftloop",
                        "static_configs": [
                            {
                                "targets": [f"127.0.0.1:{metrics_ports[name]}"],
                                "labels": {"driftloop_service": name},
                            }
                            for name in SERVICES
                        ],
                    }
                ],
            }
        )
    )
    prometheus_port = free_port()
    up_log = (tmp_path / "up.log").open("w")
    up = subprocess.Popen([*DRIFTLOOP, "up"], env=env, stdout=up_log, stderr=subprocess.STDOUT)
    prometheus = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prometheus_port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "prometheus.log").open("w"),
    )
    try:
        wait_for(
            lambda: (
                subprocess.run(
                    [*DRIFTLOOP, "status"], env=env, capture_output=True, timeout=30
                ).returncode
                == 0
            ),
            150,
            "every service ready",
        )
        asyncio.run(produce(env["DRIFTLOOP_KAFKA_BOOTSTRAP"], 20))
        # A lookup through the CLI counts as an RPC on the feature store.
        subprocess.run([*DRIFTLOOP, "features", "get", "c-1"], env=env, timeout=30, check=False)

        def every_target_up() -> bool:
            # Scraped successfully at least once: with a 1 s interval the scrape
            # timeout is 1 s too, and one scrape of a busy service on the shared
            # CI cores can take longer, which sets `up` to 0 until the next.
            up_series = query(prometheus_port, "max_over_time(up[5m]) == 1")
            return {series["metric"]["driftloop_service"] for series in up_series} == set(SERVICES)

        wait_for(every_target_up, 60, "Prometheus to scrape all six services")
        wanted = {
            "ingested events": 'driftloop_ingestion_events_total{outcome="published"}',
            "rejections by rule": "driftloop_ingestion_rejections_total",
            "consumer lag": "driftloop_kafka_consumer_lag_records",
            "RPC counts": 'driftloop_grpc_server_handled_total{driftloop_service="features"}',
            "RPC latency": "driftloop_grpc_server_handling_seconds_bucket",
        }
        for what, promql in wanted.items():
            wait_for(lambda promql=promql: query(prometheus_port, promql), 60, what)
        published = query(prometheus_port, wanted["ingested events"])
        assert sum(float(series["value"][1]) for series in published) == 20
    finally:
        prometheus.terminate()
        up.send_signal(signal.SIGTERM)
        up.wait(90)
        prometheus.wait(30)
        up_log.close()
