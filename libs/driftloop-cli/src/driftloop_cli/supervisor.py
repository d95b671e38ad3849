"""`driftloop up`: the embedded broker and every service, as one foreground command.

Each service runs as its own process, so a crash in one (or a `kill -9` in a
test) is contained; the supervisor prefixes each line it prints with the
service name, restarts a service that died with exponential backoff, and on
Ctrl-C or SIGTERM stops the services (SIGTERM, then SIGKILL after a grace
period) before the broker. A state file under `DRIFTLOOP_HOME/run/` tells
`driftloop status` what is running and where.

The embedded broker is watched too, and it keeps everything in memory: when
it dies, every topic, offset and consumer group goes with it. The services
whose own state mirrors the broker (`ServiceSpec.restart_with_broker`: the
feature store's table, drift's saved positions, ingestion's record of what it
published) are stopped at once, before anything reaches a new broker; the
broker is started again on the same port with the same backoff as a service,
its topics created, `DRIFTLOOP_HOME/ephemeral` cleared as at start-up, and
those services started again. The others (registry, trainer, inference) keep
running: their Kafka clients reconnect and rejoin their groups, and their state
(registry database, artifacts, trainer ledger, the loaded model) is not in the
broker. What the lost broker held comes back when producers replay their
events; every consumer drops what it already counted by event id.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from aiokafka.errors import KafkaConnectionError, KafkaError
from driftloop_core.broker import BrokerStartError, EmbeddedBroker, broker_ready
from driftloop_core.kafka.topics import default_topic_specs, ensure_topics
from driftloop_core.services import ServiceSpec
from driftloop_core.settings import Settings
from rich.console import Console
from rich.markup import escape
from rich.text import Text

log = structlog.get_logger(__name__)

_COLOURS = ("cyan", "magenta", "green", "yellow", "blue", "bright_red", "bright_cyan")
BACKOFF_INITIAL_S = 1.0
BACKOFF_MAX_S = 30.0
# A service that stayed up this long gets its backoff reset.
STABLE_AFTER_S = 60.0
# How long a service whose state mirrors a lost broker gets to stop before it is
# killed: what it holds is dropped anyway. Ingestion and drift stop well within
# it; the feature store's Faust app waits for the broker and is killed.
BROKER_LOSS_GRACE_S = 2.0


def state_path(settings: Settings) -> Path:
    return settings.run_dir / "supervisor.json"


def read_state(settings: Settings) -> dict[str, Any] | None:
    path = state_path(settings)
    try:
        state: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return state


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class _Child:
    spec: ServiceSpec
    endpoint: str
    colour: str
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    started_at: float = 0.0
    pump: asyncio.Task[None] | None = None
    history: list[int] = field(default_factory=list)
    # Stopped by the supervisor while the broker restarts; `released` is set
    # once it runs again, so its watcher does not restart it meanwhile.
    held: bool = False
    released: asyncio.Event = field(default_factory=asyncio.Event)


class Supervisor:
    def __init__(
        self,
        settings: Settings,
        specs: list[ServiceSpec],
        *,
        featureset: Path | None = None,
        console: Console | None = None,
    ) -> None:
        self._settings = settings
        self._featureset = featureset
        self._console = console or Console(highlight=False, soft_wrap=True)
        self._children = [
            _Child(spec, spec.endpoint(settings), _COLOURS[i % len(_COLOURS)])
            for i, spec in enumerate(specs)
        ]
        self._broker: EmbeddedBroker | None = None
        self._broker_restarts = 0
        self._stopping = asyncio.Event()
        self._bootstrap = settings.kafka.bootstrap_servers

    async def run(self) -> int:
        """Start everything, keep it running until a signal, stop it all."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self._stopping.set)
        existing = read_state(self._settings)
        if existing and pid_alive(existing.get("supervisor_pid")):
            self._say("supervisor", f"already running as pid {existing['supervisor_pid']}")
            return 1
        try:
            await self._start_broker()
            await ensure_topics(self._settings.kafka, default_topic_specs(self._settings.kafka))
            self._say("supervisor", f"topics ready on {self._bootstrap}")
            for child in self._children:
                await self._spawn(child)
            self._write_state()
            watchers = [asyncio.create_task(self._watch(child)) for child in self._children]
            if self._broker is not None:
                watchers.append(asyncio.create_task(self._watch_broker(self._broker)))
            await self._stopping.wait()
            for watcher in watchers:
                watcher.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
            return 0
        finally:
            await self._shutdown()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)

    def stop(self) -> None:
        """Ask `run()` to stop everything (what SIGINT and SIGTERM do)."""
        self._stopping.set()

    def pids(self) -> dict[str, int | None]:
        return {c.spec.name: c.process.pid if c.process else None for c in self._children}

    async def _start_broker(self) -> None:
        if not self._settings.embedded_broker:
            if not await broker_ready(self._bootstrap, timeout_s=10, kafka=self._settings.kafka):
                raise RuntimeError(f"the Kafka broker at {self._bootstrap} does not answer")
            self._say("supervisor", f"using the external broker at {self._bootstrap}")
            return
        self._broker = EmbeddedBroker(
            self._settings.endpoints.broker_port,
            log_file=self._settings.logs_dir / "broker.log",
        )
        # The embedded broker keeps nothing across restarts, so local caches of
        # its topics (table stores) would disagree with it: start them empty.
        self._clear_ephemeral()
        self._broker.start()
        self._write_state()
        await self._broker.wait_ready()
        self._bootstrap = self._broker.bootstrap
        self._say("broker", f"ready on {self._bootstrap} (pid {self._broker.pid})")

    def _child_env(self, child: _Child) -> dict[str, str]:
        env = dict(os.environ)
        env.update(child.spec.env)
        env["DRIFTLOOP_HOME"] = str(self._settings.home.resolve())
        env["DRIFTLOOP_KAFKA_BOOTSTRAP"] = self._bootstrap
        env["PYTHONUNBUFFERED"] = "1"
        if self._featureset is not None:
            env["DRIFTLOOP_FEATURESET"] = str(self._featureset.resolve())
        return env

    async def _spawn(self, child: _Child) -> None:
        child.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            child.spec.module,
            env=self._child_env(child),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        child.started_at = time.monotonic()
        child.pump = asyncio.create_task(self._pump(child, child.process))
        self._say(child.spec.name, f"started (pid {child.process.pid}) on {child.endpoint}")

    async def _pump(self, child: _Child, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        async for raw in process.stdout:
            line = raw.decode(errors="replace").rstrip()
            self._print(child.spec.name, child.colour, Text(line))

    async def _watch(self, child: _Child) -> None:
        backoff = BACKOFF_INITIAL_S
        while not self._stopping.is_set():
            assert child.process is not None
            code = await child.process.wait()
            if child.pump is not None:
                await child.pump
            if self._stopping.is_set():
                return
            if child.held:
                # Stopped on purpose while the broker restarts, which starts it again.
                await child.released.wait()
                continue
            uptime = time.monotonic() - child.started_at
            if uptime >= STABLE_AFTER_S:
                backoff = BACKOFF_INITIAL_S
            child.history.append(code)
            self._say(
                child.spec.name,
                f"[bold red]exited with code {code}[/] after {uptime:.1f}s; "
                f"restarting in {backoff:.0f}s",
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), backoff)
            if self._stopping.is_set():
                return
            if child.held or child.process.returncode is None:
                # A broker restart began during the backoff; it starts the service.
                continue
            backoff = min(backoff * 2, BACKOFF_MAX_S)
            child.restarts += 1
            await self._spawn(child)
            self._write_state()

    async def _watch_broker(self, broker: EmbeddedBroker) -> None:
        """Start the embedded broker again whenever it exits, and with it the
        services whose state mirrors it (see the module docstring)."""
        backoff = BACKOFF_INITIAL_S
        while not self._stopping.is_set():
            code = await broker.exited()
            if self._stopping.is_set():
                return
            lost_at = time.monotonic()
            uptime = lost_at - broker.started_at
            if uptime >= STABLE_AFTER_S:
                backoff = BACKOFF_INITIAL_S
            self._say(
                "broker",
                f"[bold red]exited with code {code}[/] after {uptime:.1f}s; it kept everything "
                "in memory, so every topic, offset and consumer group is gone",
            )
            mirrors = [c for c in self._children if c.spec.restart_with_broker]
            if mirrors:
                names = ", ".join(c.spec.name for c in mirrors)
                self._say(
                    "broker",
                    f"stopping {names}: their state mirrors the lost broker; they start again "
                    "on the new one, the others reconnect",
                )
                for child in mirrors:
                    child.held = True
                    child.released.clear()
                await self._terminate(mirrors, BROKER_LOSS_GRACE_S, "stopped for the new broker")
            backoff = await self._start_broker_again(broker, lost_at, backoff)
            if self._stopping.is_set():
                return
            self._broker_restarts += 1
            # Table stores and saved positions of the old broker: start them empty.
            self._clear_ephemeral()
            for child in mirrors:
                child.restarts += 1
                await self._spawn(child)
                child.held = False
                child.released.set()
            self._write_state()
            self._say(
                "broker",
                f"back after {time.monotonic() - lost_at:.1f}s, empty: replay what producers "
                "sent before the restart; events already counted are dropped by event id",
            )

    async def _start_broker_again(
        self, broker: EmbeddedBroker, since: float, backoff: float
    ) -> float:
        """Start the broker on its port after `backoff` seconds from `since`, trying
        again with a longer backoff until it answers; return the next backoff."""
        delay = max(backoff - (time.monotonic() - since), 0.0)
        while not self._stopping.is_set():
            self._say("broker", f"restarting in {delay:.0f}s on {self._bootstrap}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            if self._stopping.is_set():
                break
            backoff = min(backoff * 2, BACKOFF_MAX_S)
            try:
                broker.start()
                self._write_state()
                created = await self._topics_first(broker)
            except BrokerStartError as error:
                broker.stop()
                self._say("broker", f"[bold red]did not start[/]: {escape(str(error))}")
                delay = backoff
                continue
            except (KafkaError, RuntimeError) as error:
                created = None
                self._say("broker", f"[bold red]topics not created again[/]: {escape(str(error))}")
            self._say(
                "broker",
                f"ready again on {self._bootstrap} (pid {broker.pid}, cluster id "
                f"{broker.cluster_id})"
                + ("" if created is None else f", {len(created)} topics created"),
            )
            break
        return backoff

    async def _topics_first(self, broker: EmbeddedBroker, timeout_s: float = 20.0) -> list[str]:
        """Create the topics on a restarted broker the moment it listens.

        The services that kept running reconnect within milliseconds, with the
        old broker's metadata, and produce to topics the new broker does not
        know. Tansu (0.6) acknowledges those records but serves none of them
        until the topic is created, and once it is, answers one produce
        request per batch written before with UnknownError: seen here as ten
        seconds of failed prediction logs when the topics came 100 ms late.
        Created as soon as the port answers, they are there before any client.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            if not broker.running():
                raise BrokerStartError("the embedded broker exited before it was ready")
            try:
                return await ensure_topics(
                    self._settings.kafka, default_topic_specs(self._settings.kafka)
                )
            except KafkaConnectionError as error:
                if time.monotonic() > deadline:
                    raise BrokerStartError(
                        f"the embedded broker did not answer on {self._bootstrap} "
                        f"within {timeout_s:.0f}s"
                    ) from error
                await asyncio.sleep(0.005)

    async def _terminate(self, children: list[_Child], grace: float, done: str) -> None:
        """SIGTERM each running child, SIGKILL those still running after `grace`."""
        running = [c for c in children if c.process and c.process.returncode is None]
        for child in running:
            assert child.process is not None
            with contextlib.suppress(ProcessLookupError):
                child.process.terminate()
        for child in running:
            assert child.process is not None
            try:
                code = await asyncio.wait_for(child.process.wait(), grace)
                self._say(child.spec.name, done if code == 0 else f"{done} (exit code {code})")
            except TimeoutError:
                self._say(child.spec.name, f"did not stop within {grace:.0f}s; killed")
                with contextlib.suppress(ProcessLookupError):
                    child.process.kill()
                await child.process.wait()

    def _clear_ephemeral(self) -> None:
        shutil.rmtree(self._settings.ephemeral_dir, ignore_errors=True)

    async def _shutdown(self) -> None:
        await self._terminate(self._children, self._settings.grpc.grace_period_s + 5, "stopped")
        for child in self._children:
            if child.pump is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await child.pump
        if self._broker is not None:
            self._broker.stop()
            self._say("broker", "stopped")
        with contextlib.suppress(FileNotFoundError):
            state_path(self._settings).unlink()

    def _write_state(self) -> None:
        services = [
            {
                "name": "broker",
                "pid": self._broker.pid if self._broker else None,
                "endpoint": self._bootstrap,
                "kind": "kafka",
                "restarts": self._broker_restarts,
                "cluster_id": self._broker.cluster_id if self._broker else None,
            }
        ]
        services += [
            {
                "name": c.spec.name,
                "pid": c.process.pid if c.process else None,
                "endpoint": c.endpoint,
                "kind": "grpc",
                "restarts": c.restarts,
            }
            for c in self._children
        ]
        state = {
            "supervisor_pid": os.getpid(),
            "bootstrap": self._bootstrap,
            "home": str(self._settings.home.resolve()),
            "services": services,
        }
        path = state_path(self._settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(path)

    def _say(self, name: str, message: str) -> None:
        """A line of the supervisor's own; ``message`` may hold rich markup."""
        self._print(name, "bold", Text.from_markup(message))

    def _print(self, name: str, style: str, message: Text) -> None:
        """One output line per call, never wrapped nor cropped at the console's width:
        a service's JSON log line must stay one line in a file or a pipe, and a
        terminal wraps long lines itself. The line is printed as text, so brackets
        and colons in it are not read as markup or emoji."""
        self._console.print(Text.assemble((f"{name:>10} |", style), " ", message), soft_wrap=True)
