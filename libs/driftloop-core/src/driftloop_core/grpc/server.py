"""The one way a Driftloop service serves gRPC.

:func:`build_server` assembles a ``grpc.aio`` server with what every service
needs and nothing it must remember: the standard health service (so
Kubernetes probes and ``driftloop status`` work without our protos), server
reflection when ``grpc.reflection`` asks for it, the tracing/metrics/errors
interceptors, authorization of every call against one table of roles
(``driftloop_core.grpc.auth``), message size limits, and a cap on concurrent
RPCs beyond which callers get ``RESOURCE_EXHAUSTED`` instead of an ever longer
queue. When the ``grpc``
settings name certificates the port speaks TLS, and with
``tls_require_client_cert`` (the default) refuses clients without a certificate
signed by the configured CA.

Stopping is graceful: health turns ``NOT_SERVING`` first so load balancers and
probes stop sending work, new calls are still accepted for a short drain delay
while they notice, then the server refuses new calls and gives in-flight ones
the grace period to finish. :meth:`GrpcServer.serve_until_signal` does this on
SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2
from grpc_health.v1.health import SERVICE_NAME as HEALTH_SERVICE_NAME
from grpc_health.v1.health import aio as health_aio
from grpc_health.v1.health_pb2_grpc import add_HealthServicer_to_server
from grpc_reflection.v1alpha import reflection
from opentelemetry import trace

from driftloop_core.grpc.auth import AuthorizationInterceptor, Authorizer
from driftloop_core.grpc.interceptors import default_server_interceptors
from driftloop_core.grpc.tls import server_credentials
from driftloop_core.logging import get_logger
from driftloop_core.settings import Settings

__all__ = ["AddServicerFn", "GrpcServer", "ServicerRegistration", "build_server"]

AddServicerFn = Callable[[Any, grpc.aio.Server], None]
# (add_XServicer_to_server, servicer, "driftloop.v1.XService")
ServicerRegistration = tuple[AddServicerFn, Any, str]

# Long enough for a load balancer or a probe polling every few hundred
# milliseconds to see NOT_SERVING; short enough that Ctrl-C feels immediate.
DEFAULT_DRAIN_S = 0.5

_log = get_logger(__name__)


class GrpcServer:
    """A built, not yet listening, gRPC server with its health service."""

    def __init__(
        self,
        server: grpc.aio.Server,
        health: health_aio.HealthServicer,
        service_names: Sequence[str],
        address: str,
        grace_s: float,
        drain_s: float,
        credentials: grpc.ServerCredentials | None = None,
        extra_addresses: Sequence[str] = (),
    ) -> None:
        self.server = server
        self.health = health
        self.service_names = tuple(service_names)
        self.address = address
        self.grace_s = grace_s
        self.drain_s = drain_s
        self.credentials = credentials
        self.extra_addresses = tuple(extra_addresses)
        # The ports bound for `extra_addresses`, in order, once started.
        self.extra_ports: list[int] = []
        self._port: int | None = None
        self._stop_task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """The port bound by :meth:`start` (the real one when asked for port 0)."""
        if self._port is None:
            raise RuntimeError("the gRPC server is not started")
        return self._port

    @property
    def endpoint(self) -> str:
        """``host:port`` a client on this machine can dial."""
        host = self.address.rpartition(":")[0] or "127.0.0.1"
        return host + ":" + str(self.port)

    async def start(self) -> int:
        """Bind, start serving, mark every service SERVING; return the bound port."""
        if self._port is not None:
            return self._port
        # Raises RuntimeError naming the address when it is taken.
        port = self._bind(self.address)
        self.extra_ports = [self._bind(address) for address in self.extra_addresses]
        await self.server.start()
        self._port = port
        for name in ("", *self.service_names):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        _log.info(
            "grpc_server_started",
            address=self.address,
            port=port,
            services=list(self.service_names),
            tls=self.credentials is not None,
        )
        return port

    def _bind(self, address: str) -> int:
        port: int = (
            self.server.add_insecure_port(address)
            if self.credentials is None
            else self.server.add_secure_port(address, self.credentials)
        )
        return port

    async def set_serving(self, service: str, serving: bool) -> None:
        """Report one service (or ``""``, the whole server) as ready or not.

        Ignored once a graceful stop has begun: from then on all stay NOT_SERVING.
        """
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await self.health.set(service, status)

    async def stop(self, grace: float | None = None) -> None:
        """Stop gracefully; concurrent and repeated calls share one shutdown.

        ``grace`` (default ``settings.grpc.grace_period_s``) bounds how long
        in-flight calls may run after new ones are refused.
        """
        if self._stop_task is None:
            self._stop_task = asyncio.ensure_future(
                self._stop(self.grace_s if grace is None else grace)
            )
        await asyncio.shield(self._stop_task)

    async def _stop(self, grace: float) -> None:
        _log.info("grpc_server_stopping", address=self.address, grace_s=grace)
        await self.health.enter_graceful_shutdown()
        if self._port is not None and self.drain_s > 0:
            await asyncio.sleep(self.drain_s)
        await self.server.stop(grace)
        _log.info("grpc_server_stopped", address=self.address)

    async def wait_for_termination(self) -> None:
        """Return once the server has stopped."""
        await self.server.wait_for_termination()
        if self._stop_task is not None:
            await asyncio.shield(self._stop_task)

    async def serve_until_signal(
        self, signals: Sequence[signal.Signals] = (signal.SIGTERM, signal.SIGINT)
    ) -> None:
        """Start if needed, then serve until one of ``signals`` stops the server."""
        await self.start()
        loop = asyncio.get_running_loop()

        def on_signal(received: signal.Signals) -> None:
            _log.info("grpc_server_signal", signal=received.name)
            if self._stop_task is None:
                self._stop_task = loop.create_task(self._stop(self.grace_s))

        for sig in signals:
            loop.add_signal_handler(sig, on_signal, sig)
        try:
            await self.wait_for_termination()
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)

    async def __aenter__(self) -> GrpcServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()


def build_server(
    settings: Settings,
    servicers: Sequence[ServicerRegistration],
    address: str,
    *,
    interceptors: Sequence[grpc.aio.ServerInterceptor] | None = None,
    reuse_port: bool = False,
    drain_s: float = DEFAULT_DRAIN_S,
    tracer_provider: trace.TracerProvider | None = None,
    untraced_roots: Sequence[str] = (),
    extra_addresses: Sequence[str] = (),
) -> GrpcServer:
    """Assemble a server for ``servicers`` that will listen on ``address``.

    ``address`` is ``host:port``; port 0 picks a free one at :meth:`GrpcServer.start`.
    With ``settings.grpc.bind_host`` set, the server listens there on that port.
    ``interceptors`` replaces the default tracing/metrics/errors chain when given.
    ``reuse_port`` lets several processes share the port (grpc's own default);
    it is off so that a second instance fails to bind instead of silently taking
    half of the traffic. ``untraced_roots`` names hot read methods that join a
    caller's trace but never start one of their own. ``extra_addresses`` are more
    ``host:port`` to listen on (a worker's own address beside the port it shares
    with others). Raises ``TlsConfigError`` when TLS is configured but a
    certificate file is missing or unreadable.
    """
    credentials = server_credentials(settings.grpc)
    if settings.grpc.bind_host:
        address = f"{settings.grpc.bind_host}:{address.rpartition(':')[2]}"
        extra_addresses = [
            f"{settings.grpc.bind_host}:{extra.rpartition(':')[2]}" for extra in extra_addresses
        ]
    if interceptors is None:
        interceptors = default_server_interceptors(tracer_provider, untraced_roots=untraced_roots)
    authorizer = Authorizer(settings)
    if not authorizer.enforced:
        _log.warning(
            "grpc_authorization_off",
            address=address,
            hint="no token and no client certificate is configured: every caller may "
            "call every method; set DRIFTLOOP_*_TOKEN or mutual TLS outside one machine",
        )
    server = grpc.aio.server(
        # First: the others cache their wrapped handler per method, so whatever
        # comes after them would be decided once per method, not once per call.
        interceptors=[AuthorizationInterceptor(authorizer), *interceptors],
        options=[
            ("grpc.max_send_message_length", settings.grpc.max_message_bytes),
            ("grpc.max_receive_message_length", settings.grpc.max_message_bytes),
            ("grpc.so_reuseport", 1 if reuse_port else 0),
        ],
        maximum_concurrent_rpcs=settings.grpc.max_concurrent_rpcs,
    )
    names: list[str] = []
    for add_to_server, servicer, name in servicers:
        add_to_server(servicer, server)
        names.append(name)

    health = health_aio.HealthServicer()
    add_HealthServicer_to_server(health, server)
    if settings.grpc.reflection:
        reflection.enable_server_reflection(
            [*names, HEALTH_SERVICE_NAME, reflection.SERVICE_NAME], server
        )
    return GrpcServer(
        server,
        health,
        names,
        address,
        grace_s=settings.grpc.grace_period_s,
        drain_s=drain_s,
        credentials=credentials,
        extra_addresses=extra_addresses,
    )
