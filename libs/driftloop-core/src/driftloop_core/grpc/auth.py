"""Who may call what: one table of roles per RPC, checked on every call.

Every gRPC method of every Driftloop service needs one role (or none, for the
health checks), named in :data:`METHOD_ROLES`:

========  =====================================================================
role      methods
========  =====================================================================
ingest    ``IngestService/Ingest``, ``IngestStream``
read      ``FeatureService/*``, the registry's reads and ``DownloadArtifact``,
          server reflection (when it is on)
predict   ``Predictor/Predict``; the Open Inference Protocol's ``ModelInfer``,
          ``ModelMetadata``, ``ModelReady``, ``ServerMetadata``, ``RepositoryIndex``
admin     ``RegistryService/Promote``, ``Rollback``; holds every other role too
(open)    ``grpc.health.v1.Health``, OIP ``ServerLive`` and ``ServerReady``
========  =====================================================================

A method missing from the table is refused to everyone: deny by default.

A caller holds roles by its credentials:

* a bearer token (``authorization: Bearer <token>``) equal to one of the
  configured ``DRIFTLOOP_READ_TOKEN``, ``_PREDICT_TOKEN``, ``_INGEST_TOKEN``,
  ``_ADMIN_TOKEN`` holds that role (compared in constant time);
* under mutual TLS, the client certificate's names (common name and subject
  alternative names) hold the roles ``grpc.client_roles`` gives them; the
  services that call others (``inference``, ``trainer``, ``drift``, and
  ``features`` for lookups one worker forwards to another) hold ``read`` by name.

Authorization is enforced once any token is set or clients must present a
certificate; with neither (the embedded single-machine stack) every call is
allowed and the server says so in its log once. Clients made by
:func:`driftloop_core.grpc.client.open_channel` send the token for the role a
method needs (the admin token when that role has none) by themselves.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import grpc
import grpc.aio
from prometheus_client import Counter

from driftloop_core.logging import get_logger
from driftloop_core.settings import Settings

__all__ = [
    "GRPC_SERVER_DENIED",
    "METHOD_ROLES",
    "SERVICE_IDENTITIES",
    "AuthorizationInterceptor",
    "Authorizer",
    "Role",
    "bearer_metadata",
    "caller_identity",
    "client_interceptors",
    "require_bearer",
]

AUTHORIZATION = "authorization"

_log = get_logger(__name__)

GRPC_SERVER_DENIED = Counter(
    "driftloop_grpc_server_denied_total",
    "Calls refused by authorization, by method and code (UNAUTHENTICATED: no valid "
    "credential; PERMISSION_DENIED: a credential without the method's role).",
    ["method", "code"],
)


class Role(StrEnum):
    INGEST = "ingest"
    READ = "read"
    PREDICT = "predict"
    ADMIN = "admin"


_OIP = "/inference.GRPCInferenceService/"
_REGISTRY = "/driftloop.v1.RegistryService/"
_FEATURES = "/driftloop.v1.FeatureService/"
_REFLECTION = (
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
)

# The one table: the role each method needs; None is open to any caller.
METHOD_ROLES: Mapping[str, Role | None] = {
    "/grpc.health.v1.Health/Check": None,
    "/grpc.health.v1.Health/Watch": None,
    _OIP + "ServerLive": None,
    _OIP + "ServerReady": None,
    _OIP + "ModelReady": Role.PREDICT,
    _OIP + "ServerMetadata": Role.PREDICT,
    _OIP + "ModelMetadata": Role.PREDICT,
    _OIP + "ModelInfer": Role.PREDICT,
    _OIP + "RepositoryIndex": Role.PREDICT,
    "/driftloop.v1.Predictor/Predict": Role.PREDICT,
    "/driftloop.v1.IngestService/Ingest": Role.INGEST,
    "/driftloop.v1.IngestService/IngestStream": Role.INGEST,
    _FEATURES + "GetOnlineFeatures": Role.READ,
    _FEATURES + "GetTrainingSet": Role.READ,
    _REGISTRY + "ListModels": Role.READ,
    _REGISTRY + "ListVersions": Role.READ,
    _REGISTRY + "GetVersion": Role.READ,
    _REGISTRY + "GetChampion": Role.READ,
    _REGISTRY + "ListAliasHistory": Role.READ,
    _REGISTRY + "ListRollouts": Role.READ,
    _REGISTRY + "DownloadArtifact": Role.READ,
    _REGISTRY + "Promote": Role.ADMIN,
    _REGISTRY + "Rollback": Role.ADMIN,
    **{method: Role.READ for method in _REFLECTION},
}

# Certificate names of the services that call others, and what they call.
SERVICE_IDENTITIES: Mapping[str, frozenset[Role]] = {
    "inference": frozenset({Role.READ}),
    "trainer": frozenset({Role.READ}),
    "drift": frozenset({Role.READ}),
    # A feature-store worker asks the others for the entities they own.
    "features": frozenset({Role.READ}),
}

_ALL_ROLES = frozenset(Role)


def _method_name(method: str | bytes) -> str:
    return method.decode() if isinstance(method, bytes) else method


def _presented(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    for key, value in metadata or ():
        if key == AUTHORIZATION and isinstance(value, str):
            scheme, _, presented = value.partition(" ")
            return presented.strip() if scheme.lower() == "bearer" else None
    return None


def bearer_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying ``token``; empty when there is none."""
    return ((AUTHORIZATION, f"Bearer {token}"),) if token else ()


def _secret(value: Any) -> str | None:
    if value is None:
        return None
    text: str = value.get_secret_value() if hasattr(value, "get_secret_value") else str(value)
    return text or None


def role_tokens(settings: Settings) -> dict[Role, str]:
    """The configured token of each role that has one."""
    configured = {
        Role.READ: _secret(settings.read_token),
        Role.PREDICT: _secret(settings.predict_token),
        Role.INGEST: _secret(settings.ingest_token),
        Role.ADMIN: _secret(settings.admin_token),
    }
    return {role: token for role, token in configured.items() if token}


def _certificate_names(context: Any) -> list[str]:
    auth = context.auth_context() or {}
    names: list[str] = []
    for key in ("x509_common_name", "x509_subject_alternative_name"):
        for value in auth.get(key, ()):
            name = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
            if name and name not in names:
                names.append(name)
    return names


@dataclass(frozen=True)
class Caller:
    """Who a call came from and the roles its credentials hold."""

    identity: str
    roles: frozenset[Role]


class Authorizer:
    """The roles a call's credentials hold, from one process's settings."""

    def __init__(self, settings: Settings) -> None:
        self._tokens = role_tokens(settings)
        roles: dict[str, frozenset[Role]] = dict(SERVICE_IDENTITIES)
        for name, granted in settings.grpc.client_roles.items():
            roles[name] = roles.get(name, frozenset()) | frozenset(Role(r) for r in granted)
        self._certificate_roles = roles
        self.certificates = settings.grpc.tls and settings.grpc.tls_require_client_cert
        self.enforced = bool(self._tokens) or self.certificates

    def token_caller(self, metadata: Iterable[tuple[str, Any]] | None) -> Caller | None:
        """The caller a bearer token makes, or None when no configured token matches."""
        presented = _presented(metadata)
        if presented is None:
            return None
        roles: set[Role] = set()
        names: list[str] = []
        for role, token in self._tokens.items():
            if hmac.compare_digest(presented.encode(), token.encode()):
                roles |= _ALL_ROLES if role is Role.ADMIN else {role}
                names.append(role.value)
        if not roles:
            return None
        return Caller("token:" + "+".join(names), frozenset(roles))

    def certificate_caller(self, context: Any) -> Caller | None:
        """The caller a client certificate makes, or None without one."""
        names = _certificate_names(context)
        if not names:
            return None
        roles: set[Role] = set()
        for name in names:
            granted = self._certificate_roles.get(name, frozenset())
            roles |= _ALL_ROLES if Role.ADMIN in granted else granted
        return Caller("cert:" + names[0], frozenset(roles))

    def caller(self, context: Any) -> Caller:
        """Everything the call's credentials hold: its token's roles and its
        certificate's, under the token's name when it has one."""
        by_token = self.token_caller(context.invocation_metadata())
        by_certificate = self.certificate_caller(context)
        if by_token is None and by_certificate is None:
            return Caller("anonymous", frozenset(_ALL_ROLES if not self.enforced else ()))
        roles = (by_token.roles if by_token else frozenset()) | (
            by_certificate.roles if by_certificate else frozenset()
        )
        first = by_token or by_certificate
        assert first is not None
        if not self.enforced:
            roles = frozenset(_ALL_ROLES)
        return Caller(first.identity, roles)


def caller_identity(context: Any, authorizer: Authorizer) -> str:
    """The caller's name for an audit trail: ``token:<role>``, ``cert:<name>``,
    or ``anonymous``; never what the request says about itself."""
    return authorizer.caller(context).identity


async def require_bearer(
    context: grpc.aio.ServicerContext[Any, Any], token: str | None, variable: str
) -> None:
    """Abort the call with UNAUTHENTICATED unless it carries ``token``.

    Does nothing when ``token`` is None or empty. ``variable`` names the setting
    that holds the token, for the caller's error message.
    """
    if not token:
        return
    presented = _presented(context.invocation_metadata())
    if presented is None or not hmac.compare_digest(presented.encode(), token.encode()):
        await context.abort(
            grpc.StatusCode.UNAUTHENTICATED,
            f"authorization: a valid 'Bearer <{variable}>' is required",
        )


Continuation = Callable[
    [grpc.HandlerCallDetails], Awaitable["grpc.RpcMethodHandler[Any, Any] | None"]
]


def _token_variable(role: Role) -> str:
    return f"DRIFTLOOP_{role.value.upper()}_TOKEN"


class AuthorizationInterceptor(grpc.aio.ServerInterceptor):
    """Refuses every call whose credentials lack the role its method needs.

    It must run first in the chain: it decides per call, and the interceptors
    after it may cache what they return per method. A valid token is checked
    from the call's metadata before the handler runs and costs no wrapper; any
    other call is checked inside the handler, where its certificate is known.
    """

    def __init__(self, authorizer: Authorizer) -> None:
        self._authorizer = authorizer
        self._guarded: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None or not self._authorizer.enforced:
            return handler
        method = _method_name(handler_call_details.method)
        if method in METHOD_ROLES and METHOD_ROLES[method] is None:
            return handler
        role = METHOD_ROLES.get(method)
        if role is not None:
            by_token = self._authorizer.token_caller(handler_call_details.invocation_metadata)
            if by_token is not None and role in by_token.roles:
                return handler
        guarded = self._guarded.get(method)
        if guarded is None:
            guarded = self._guarded[method] = _guard(handler, method, role, self._authorizer)
        return guarded


def _denial(method: str, role: Role | None, caller: Caller) -> tuple[grpc.StatusCode, str]:
    if role is None:
        return (
            grpc.StatusCode.PERMISSION_DENIED,
            f"{method}: not in the authorization table; no caller may call it",
        )
    if caller.identity == "anonymous":
        return (
            grpc.StatusCode.UNAUTHENTICATED,
            f"{method} needs the '{role.value}' role: send 'authorization: Bearer "
            f"<{_token_variable(role)}>' or a client certificate granted it",
        )
    return (
        grpc.StatusCode.PERMISSION_DENIED,
        f"{method} needs the '{role.value}' role; {caller.identity} does not hold it",
    )


def _guard(
    handler: grpc.RpcMethodHandler[Any, Any],
    method: str,
    role: Role | None,
    authorizer: Authorizer,
) -> grpc.RpcMethodHandler[Any, Any]:
    """``handler`` behind a check of the call's certificate (and token)."""

    async def check(context: Any) -> None:
        caller = authorizer.caller(context)
        if role is not None and role in caller.roles:
            return
        code, details = _denial(method, role, caller)
        GRPC_SERVER_DENIED.labels(method, code.name).inc()
        _log.warning("grpc_call_denied", method=method, caller=caller.identity, code=code.name)
        await context.abort(code, details)

    def unary(behavior: Callable[..., Any]) -> Callable[..., Any]:
        async def guarded(request: Any, context: Any) -> Any:
            await check(context)
            result = behavior(request, context)
            return await result if hasattr(result, "__await__") else result

        return guarded

    def streaming(behavior: Callable[..., Any]) -> Callable[..., Any]:
        async def guarded(request: Any, context: Any) -> Any:
            await check(context)
            result = behavior(request, context)
            if hasattr(result, "__aiter__"):
                async for response in result:
                    yield response
            elif hasattr(result, "__await__"):
                await result
            elif result is not None:
                for response in result:
                    yield response

        return guarded

    if handler.request_streaming and handler.response_streaming:
        assert handler.stream_stream is not None
        return grpc.stream_stream_rpc_method_handler(
            streaming(handler.stream_stream),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.request_streaming:
        assert handler.stream_unary is not None
        return grpc.stream_unary_rpc_method_handler(
            unary(handler.stream_unary),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.response_streaming:
        assert handler.unary_stream is not None
        return grpc.unary_stream_rpc_method_handler(
            streaming(handler.unary_stream),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    assert handler.unary_unary is not None
    return grpc.unary_unary_rpc_method_handler(
        unary(handler.unary_unary),
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class _BearerTokens:
    """Adds, to a call's details, the token of the role its method needs.

    The role's own token when this process has one, the admin token otherwise;
    nothing for open methods or when the call already carries a credential.
    """

    def __init__(self, tokens: Mapping[Role, str]) -> None:
        self._tokens = dict(tokens)

    def details(self, details: Any) -> Any:
        role = METHOD_ROLES.get(_method_name(details.method))
        if role is None:
            return details
        token = self._tokens.get(role) or self._tokens.get(Role.ADMIN)
        metadata = list(details.metadata or ())
        if token is None or any(key == AUTHORIZATION for key, _ in metadata):
            return details
        metadata.extend(bearer_metadata(token))
        return grpc.aio.ClientCallDetails(
            details.method,
            details.timeout,
            grpc.aio.Metadata(*metadata),
            details.credentials,
            details.wait_for_ready,
        )


# grpc.aio files an interceptor under the first call shape it implements, so
# each shape has its own class.
class _UnaryUnaryBearer(_BearerTokens, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self.details(details), request)


class _UnaryStreamBearer(_BearerTokens, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self.details(details), request)


class _StreamUnaryBearer(_BearerTokens, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(
        self, continuation: Any, details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(self.details(details), request_iterator)


class _StreamStreamBearer(_BearerTokens, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(
        self, continuation: Any, details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(self.details(details), request_iterator)


def client_interceptors(settings: Settings) -> Sequence[grpc.aio.ClientInterceptor]:
    """The interceptor that sends this process's tokens; none when it has none."""
    tokens = role_tokens(settings)
    if not tokens:
        return []
    return [
        _UnaryUnaryBearer(tokens),
        _UnaryStreamBearer(tokens),
        _StreamUnaryBearer(tokens),
        _StreamStreamBearer(tokens),
    ]
