"""The authorization table covers every RPC the services serve, and the client
side sends the token the server will ask for."""

from __future__ import annotations

from pathlib import Path

from driftloop.v1 import features_pb2, ingest_pb2, predictor_pb2, registry_pb2
from driftloop_core.grpc.auth import METHOD_ROLES, Authorizer, Role, _BearerTokens
from driftloop_core.settings import GrpcSettings, Settings
from inference import grpc_service_pb2
from pydantic import SecretStr

SERVED = [features_pb2, ingest_pb2, predictor_pb2, registry_pb2, grpc_service_pb2]


def served_methods() -> list[str]:
    return [
        f"/{service.full_name}/{method.name}"
        for module in SERVED
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    ]


def test_every_served_method_has_a_row() -> None:
    methods = served_methods()
    assert len(methods) == 21
    missing = [method for method in methods if method not in METHOD_ROLES]
    assert missing == []


def test_only_health_and_liveness_are_open() -> None:
    open_methods = sorted(m for m, role in METHOD_ROLES.items() if role is None)
    assert open_methods == [
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/inference.GRPCInferenceService/ServerLive",
        "/inference.GRPCInferenceService/ServerReady",
    ]
    assert METHOD_ROLES["/driftloop.v1.RegistryService/Promote"] is Role.ADMIN
    assert METHOD_ROLES["/driftloop.v1.FeatureService/GetTrainingSet"] is Role.READ
    assert METHOD_ROLES["/driftloop.v1.RegistryService/ListRollouts"] is Role.READ


def tokens(**values: str) -> Settings:
    return Settings(**{f"{role}_token": SecretStr(token) for role, token in values.items()})


def test_a_token_holds_its_role_and_admin_holds_all() -> None:
    authorizer = Authorizer(tokens(read="r", predict="p", admin="a"))
    assert authorizer.enforced
    read = authorizer.token_caller([("authorization", "Bearer r")])
    assert read is not None and read.roles == {Role.READ} and read.identity == "token:read"
    admin = authorizer.token_caller([("authorization", "bearer a")])
    assert admin is not None and admin.roles == set(Role)
    for wrong in ("Bearer x", "r", "Basic r", "Bearer "):
        assert authorizer.token_caller([("authorization", wrong)]) is None


def test_nothing_configured_means_open_and_certificates_mean_enforced() -> None:
    assert not Authorizer(Settings()).enforced
    pem = Path(__file__)  # only whether TLS is configured matters here
    mutual = Settings(grpc=GrpcSettings(tls_ca_file=pem, tls_cert_file=pem, tls_key_file=pem))
    assert Authorizer(mutual).enforced
    optional = Settings(
        grpc=GrpcSettings(
            tls_ca_file=pem, tls_cert_file=pem, tls_key_file=pem, tls_require_client_cert=False
        )
    )
    assert not Authorizer(optional).enforced


class Details:
    def __init__(self, method: str, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self.method = method.encode()
        self.timeout = None
        self.metadata = metadata
        self.credentials = None
        self.wait_for_ready = None


def test_clients_send_the_role_token_or_the_admin_one() -> None:
    sender = _BearerTokens({Role.READ: "r", Role.ADMIN: "a"})

    def sent(method: str, metadata: tuple[tuple[str, str], ...] = ()) -> list[tuple[str, str]]:
        return [(k, v) for k, v in sender.details(Details(method, metadata)).metadata or ()]

    assert sent("/driftloop.v1.FeatureService/GetOnlineFeatures") == [("authorization", "Bearer r")]
    assert sent("/driftloop.v1.RegistryService/Promote") == [("authorization", "Bearer a")]
    assert sent("/driftloop.v1.Predictor/Predict") == [("authorization", "Bearer a")]
    assert sent("/grpc.health.v1.Health/Check") == []
    # A credential the caller chose is left alone.
    chosen = (("authorization", "Bearer mine"),)
    assert sent("/driftloop.v1.RegistryService/Promote", chosen) == list(chosen)
    # A process without the admin token sends nothing where its own roles end.
    reader = _BearerTokens({Role.READ: "r"})
    promote = Details("/driftloop.v1.RegistryService/Promote")
    assert list(reader.details(promote).metadata or ()) == []
