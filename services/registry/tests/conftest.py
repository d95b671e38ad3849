"""Registry fixtures: a real registry service on the session broker, tiny ONNX
models, readers for the topics it writes, a real PostgreSQL server and a real
S3-compatible server (moto's).

Each test gets its own `models.trained` and dead-letter topics, consumer group
and model name; `models.registered` and `models.promoted` are shared, so
readers keep only the records keyed by the test's model.

PostgreSQL is what production runs the registry on, so the store tests run on it
too: one throwaway server per test session (initdb + pg_ctl in a temp folder, on
a free port), one fresh database per test. Its binaries come from PATH or
/usr/lib/postgresql/*/bin; `.ci/run` installs Debian's `postgresql` when they are
missing, so in CI (CI=true) their absence fails the tests instead of skipping them.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import onnx
import pytest
from aiokafka import AIOKafkaProducer
from driftloop.v1 import common_pb2, events_pb2
from driftloop_core.artifacts import ArtifactStore
from driftloop_core.broker import free_port
from driftloop_core.settings import Settings
from driftloop_registry.adapters.schema import open_engine
from driftloop_registry.adapters.store import SqlRegistryStore
from driftloop_registry.bootstrap import RegistryService
from driftloop_registry.config import RegistrySettings
from driftloop_testing import collect, eventually, model_trained
from google.protobuf.message import Message
from onnx import TensorProto, helper
from pydantic import SecretStr
from sqlalchemy import create_engine, text

# Test modules import the shared stand-ins (`fakes.py`) by module name.
sys.path.insert(0, str(Path(__file__).resolve().parent))

TOKEN = "s3cret-admin-token"
READ_TOKEN = "s3cret-read-token"
M = TypeVar("M", bound=Message)


def tiny_onnx(scale: float = 1.0) -> bytes:
    """A real one-node ONNX graph, `probabilities = features * scale`;
    `scale` gives each model distinct bytes."""
    weight = helper.make_tensor("scale", TensorProto.FLOAT, [1], [scale])
    node = helper.make_node("Mul", ["features", "scale"], ["probabilities"])
    graph = helper.make_graph(
        [node],
        "tiny",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


@pytest.fixture
def model_name(unique: str) -> str:
    return f"payments-{unique}"


@pytest.fixture
def admin_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"admin_token": SecretStr(TOKEN), "read_token": SecretStr(READ_TOKEN)}
    )


@pytest.fixture
def config(unique: str) -> RegistrySettings:
    return RegistrySettings(
        source_topic=f"t.models.trained.{unique}",
        deadletter_topic=f"t.deadletter.{unique}",
        group_id=f"g.registry.{unique}",
        chunk_size=1024,
    )


@pytest.fixture
async def service(
    admin_settings: Settings, config: RegistrySettings
) -> AsyncIterator[RegistryService]:
    running = RegistryService(admin_settings.for_service("registry"), config, "127.0.0.1:0")
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


@pytest.fixture
def artifacts(admin_settings: Settings) -> ArtifactStore:
    return ArtifactStore.from_settings(admin_settings)


@pytest.fixture
def make_trained(
    artifacts: ArtifactStore, model_name: str
) -> Callable[..., events_pb2.ModelTrained]:
    def make(
        request_id: str,
        auc: float,
        *,
        champion_auc: float | None = None,
        champion_version: int | None = None,
        scale: float = 1.0,
    ) -> events_pb2.ModelTrained:
        return model_trained(
            model_name,
            artifacts.put(tiny_onnx(scale)),
            request_id,
            auc,
            champion_auc=champion_auc,
            champion_version=champion_version,
            signature=common_pb2.ModelSignature(
                inputs=[common_pb2.TensorSpec(name="features", datatype="FP32", shape=[-1, 2])],
                outputs=[
                    common_pb2.TensorSpec(name="probabilities", datatype="FP32", shape=[-1, 2])
                ],
            ),
            metrics={"roc_auc": auc, "accuracy": 0.9},
            row_count=500,
            params={"max_depth": "4"},
            algorithm="hist_gradient_boosting",
        )

    return make


@pytest.fixture
async def send_trained(
    admin_settings: Settings, config: RegistrySettings
) -> AsyncIterator[Callable[[events_pb2.ModelTrained], Awaitable[None]]]:
    producer = AIOKafkaProducer(bootstrap_servers=admin_settings.kafka.bootstrap_servers)
    await producer.start()

    async def send(message: events_pb2.ModelTrained) -> None:
        await producer.send_and_wait(
            config.source_topic,
            message.SerializeToString(),
            key=message.model.encode(),
            headers=[
                ("ce_id", f"trained-{message.request_id}".encode()),
                ("ce_type", b"driftloop.model.trained.v1"),
            ],
        )

    try:
        yield send
    finally:
        await producer.stop()


async def read_topic(
    settings: Settings, topic: str, key: str, kind: type[M], *, count: int, within: float = 15.0
) -> list[tuple[dict[str, bytes], M]]:
    """Records keyed `key` on `topic`, from the start, once at least `count` arrived
    (then a short pause to catch any extra ones)."""
    records = await collect(
        settings,
        topic,
        lambda r: r.key == key.encode(),
        at_least=count,
        timeout_s=within,
        or_fewer=True,
    )
    return [(dict(r.headers or ()), kind.FromString(r.value)) for r in records]


@pytest.fixture
def read_events() -> Callable[..., Awaitable[list[tuple[dict[str, bytes], Any]]]]:
    return read_topic


@pytest.fixture
def wait_for() -> Callable[..., Awaitable[Any]]:
    """`check`'s first truthy result within `within` seconds (the test fails after)."""

    def wait(check: Callable[[], Awaitable[Any]], within: float = 20.0) -> Awaitable[Any]:
        return eventually(check, within, "the registry")

    return wait


@pytest.fixture
def onnx_bytes() -> Callable[[float], bytes]:
    return tiny_onnx


# ---------------------------------------------------------------- PostgreSQL


def postgres_bindir() -> Path | None:
    """The folder holding initdb and pg_ctl: PATH first, else Debian's newest."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda path: int(Path(path).parts[-3]) if Path(path).parts[-3].isdigit() else 0,
    )
    return Path(candidates[-1]).parent if candidates else None


@dataclass
class PostgresServer:
    """A private PostgreSQL cluster: trust auth for user `driftloop` on 127.0.0.1.

    initdb refuses to run as root, so as root the cluster belongs to the
    `postgres` system user and every server command runs through runuser, from
    the cluster's own folder: the caller's working directory (a clone in a folder
    only root may enter) is one `postgres` cannot change back into."""

    bindir: Path
    root: Path
    port: int
    as_user: list[str]
    # What initdb and pg_ctl said on stderr, run by run, even when they succeeded.
    complaints: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, bindir: Path) -> PostgresServer:
        # Not under pytest's tmp dir: that is private to root, and the server
        # may run as another user.
        root = Path(tempfile.mkdtemp(prefix="driftloop-pg-"))
        as_user: list[str] = []
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                shutil.rmtree(root)
                pytest.fail("running as root, PostgreSQL needs a `postgres` system user")
            os.chown(root, owner.pw_uid, owner.pw_gid)
            as_user = ["runuser", "-u", "postgres", "--"]
        server = cls(bindir, root, free_port(), as_user)
        try:
            server._run(
                "initdb", "-D", server.data, "-U", "driftloop", "-A", "trust", "-E", "UTF8", "-N"
            )
            server.resume()
        except BaseException:
            server.stop()
            raise
        return server

    @property
    def data(self) -> str:
        return str(self.root / "data")

    def halt(self) -> None:
        """Stop the server, cutting its sessions, and keep its data: every
        database is unreachable until `resume`."""
        self._run("pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")

    def resume(self) -> None:
        """Start the server on its port, returning once it accepts connections."""
        # Durability off: the cluster is thrown away after the session.
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c full_page_writes=off -c synchronous_commit=off"
        )
        log = str(self.root / "server.log")
        self._run("pg_ctl", "-D", self.data, "-l", log, "-o", options, "-w", "start")

    def _run(self, tool: str, *args: str) -> None:
        command = [*self.as_user, str(self.bindir / tool), *args]
        done = subprocess.run(
            command, cwd=self.root, capture_output=True, text=True, timeout=60, check=False
        )
        self.complaints.append(done.stderr)
        if done.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            pytest.fail(f"{tool} failed ({done.returncode}): {done.stderr.strip()}\n{tail}")

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://driftloop@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new empty database; its SQLAlchemy URL."""
        admin = create_engine(self.url("postgres"), isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as connection:
                connection.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            admin.dispose()
        return self.url(name)

    def stop(self) -> None:
        if (self.root / "data" / "postmaster.pid").exists():
            pg_ctl = [*self.as_user, str(self.bindir / "pg_ctl"), "-D", self.data]
            stop = [*pg_ctl, "-m", "immediate", "-w", "stop"]
            subprocess.run(stop, cwd=self.root, capture_output=True, timeout=60, check=False)
        shutil.rmtree(self.root, ignore_errors=True)


def required_bindir() -> Path:
    """`postgres_bindir()`, else skip locally and fail in CI, where `.ci/run` installs it."""
    bindir = postgres_bindir()
    if bindir is None:
        reason = (
            "PostgreSQL binaries (initdb, pg_ctl) not found on PATH or in "
            "/usr/lib/postgresql/*/bin; install Debian's `postgresql` package"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason} (.ci/run does so in CI)")
        pytest.skip(reason)
    return bindir


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL server for the whole session."""
    server = PostgresServer.start(required_bindir())
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def start_postgres() -> Iterator[Callable[[], PostgresServer]]:
    """Starts another private cluster, stopped after the test: for tests of how the
    session's cluster is set up."""
    started: list[PostgresServer] = []

    def start() -> PostgresServer:
        started.append(PostgresServer.start(required_bindir()))
        return started[-1]

    try:
        yield start
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def postgres_url(postgres: PostgresServer, unique: str) -> str:
    """A fresh database on the session's PostgreSQL server."""
    return postgres.create_database(f"registry_{unique}")


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)],
)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlRegistryStore]:
    """The SQL store on a real SQLite file, and on a real PostgreSQL database."""
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_url")
    else:
        url = f"sqlite:///{tmp_path / 'r' / 'registry.db'}"
    opened = SqlRegistryStore(open_engine(url))
    try:
        yield opened
    finally:
        opened.close()


# ---------------------------------------------------------------- S3


@pytest.fixture(scope="session")
def s3_options() -> Iterator[dict[str, str]]:
    """An S3-compatible server (moto) on a free port for the whole session, as the
    fsspec storage options that reach it (endpoint_url, key, secret)."""
    # Imported here: moto takes seconds to import, and most tests never need it.
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        # moto accepts any credentials; they only have to be present.
        yield {"endpoint_url": f"http://127.0.0.1:{port}", "key": "testing", "secret": "testing"}
    finally:
        server.stop()
