"""Mutual TLS on real gRPC servers, with a certificate authority made in the test.

A CA signs one certificate for the services (named localhost and 127.0.0.1, good
for serving and for calling) and one for an operator's CLI; a second CA plays
the stranger. A caller with a certificate of the first CA gets through; one with
no certificate, with a certificate of the other CA, or trusting only the other
CA, is refused before any RPC runs. The registry service runs for real (on the
session broker) behind `build_server`, and its callers are the ones Driftloop
ships: the core channel, `driftloop status`, the container health probe and
`driftloop models list`.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from driftloop.v1 import registry_pb2, registry_pb2_grpc
from driftloop_cli.status import grpc_serving
from driftloop_core.grpc import build_server, insecure_channel, open_channel
from driftloop_core.grpc.health_probe import probe
from driftloop_core.grpc.tls import TlsConfigError
from driftloop_core.settings import GrpcSettings, Settings, load_settings
from driftloop_registry.bootstrap import RegistryService
from driftloop_registry.config import RegistrySettings
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import ValidationError

pytestmark = pytest.mark.integration

SERVING = health_pb2.HealthCheckResponse.SERVING


# ------------------------------------------------------------------ certificates


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    ca: Path
    service: Issued  # localhost / 127.0.0.1, server and client use
    operator: Issued  # client use only
    inference: Issued  # named as the inference service, client use only
    named: Issued  # names only registry.driftloop.internal, no address
    other_ca: Path
    stranger: Issued  # signed by the other CA


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(folder: Path, stem: str, cert: x509.Certificate, key: Any) -> Issued:
    cert_path, key_path = folder / f"{stem}.pem", folder / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Issued(cert_path, key_path)


def _ca(folder: Path, stem: str) -> tuple[Issued, x509.Certificate, Any]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(stem))
        .issuer_name(_name(stem))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return _write(folder, stem, cert, key), cert, key


def _leaf(
    folder: Path,
    stem: str,
    ca: tuple[x509.Certificate, Any],
    *,
    dns: list[str],
    ips: list[str],
    server: bool,
) -> Issued:
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if server:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(stem))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    )
    names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return _write(folder, stem, builder.sign(ca_key, hashes.SHA256()), key)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca, ca_cert, ca_key = _ca(folder, "driftloop-ca")
    other, other_cert, other_key = _ca(folder, "other-ca")
    signer = (ca_cert, ca_key)
    return Pki(
        ca=ca.cert,
        service=_leaf(folder, "service", signer, dns=["localhost"], ips=["127.0.0.1"], server=True),
        operator=_leaf(folder, "operator", signer, dns=[], ips=[], server=False),
        inference=_leaf(folder, "inference", signer, dns=["inference"], ips=[], server=False),
        named=_leaf(
            folder, "named", signer, dns=["registry.driftloop.internal"], ips=[], server=True
        ),
        other_ca=other.cert,
        stranger=_leaf(
            folder,
            "stranger",
            (other_cert, other_key),
            dns=["localhost"],
            ips=["127.0.0.1"],
            server=True,
        ),
    )


def with_tls(settings: Settings, **grpc: Any) -> Settings:
    """`settings` with these `grpc` fields changed (the TLS ones, mostly)."""
    return settings.model_copy(update={"grpc": settings.grpc.model_copy(update=grpc)})


def mutual(settings: Settings, pki: Pki, issued: Issued | None = None) -> Settings:
    issued = issued or pki.service
    return with_tls(
        settings, tls_ca_file=pki.ca, tls_cert_file=issued.cert, tls_key_file=issued.key
    )


async def health(channel: grpc.aio.Channel) -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(), timeout=5
    )
    return int(reply.status)


async def refused(channel: grpc.aio.Channel) -> grpc.StatusCode:
    """The code a call on `channel` fails with; fails the test if it succeeds."""
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await health(channel)
    return caught.value.code()


# ------------------------------------------------------------------- the tests


@pytest.fixture
def plain(tmp_path: Path) -> Settings:
    return load_settings(home=tmp_path / "home", service_name="tls-test")


@pytest.fixture
async def tls_server(plain: Settings, pki: Pki) -> AsyncIterator[str]:
    """Only the health service, on `build_server` with mutual TLS; its endpoint."""
    server = build_server(mutual(plain, pki), [], "127.0.0.1:0", drain_s=0)
    await server.start()
    try:
        yield server.endpoint
    finally:
        await server.stop(0)


async def test_a_client_with_a_certificate_of_the_ca_gets_through(
    tls_server: str, plain: Settings, pki: Pki
) -> None:
    for issued in (pki.service, pki.operator):
        async with open_channel(tls_server, mutual(plain, pki, issued)) as channel:
            assert await health(channel) == SERVING


async def test_clients_without_a_trusted_certificate_are_refused(
    tls_server: str, plain: Settings, pki: Pki
) -> None:
    # TLS, trusting the right CA, but no certificate of its own.
    no_cert = with_tls(plain, tls_ca_file=pki.ca)
    assert await refused(open_channel(tls_server, no_cert)) == grpc.StatusCode.UNAVAILABLE
    # A certificate the server's CA did not sign.
    foreign = with_tls(
        plain,
        tls_ca_file=pki.ca,
        tls_cert_file=pki.stranger.cert,
        tls_key_file=pki.stranger.key,
    )
    assert await refused(open_channel(tls_server, foreign)) == grpc.StatusCode.UNAVAILABLE
    # A client that trusts another CA does not accept the server's certificate.
    distrustful = with_tls(mutual(plain, pki), tls_ca_file=pki.other_ca)
    assert await refused(open_channel(tls_server, distrustful)) == grpc.StatusCode.UNAVAILABLE
    # Plaintext.
    assert await refused(insecure_channel(tls_server, plain)) == grpc.StatusCode.UNAVAILABLE


async def test_client_certificates_can_be_optional(plain: Settings, pki: Pki) -> None:
    server_settings = mutual(plain, pki)
    server_settings = with_tls(server_settings, tls_require_client_cert=False)
    server = build_server(server_settings, [], "127.0.0.1:0", drain_s=0)
    await server.start()
    try:
        async with open_channel(server.endpoint, with_tls(plain, tls_ca_file=pki.ca)) as channel:
            assert await health(channel) == SERVING
        # Still TLS: plaintext is refused.
        await refused(insecure_channel(server.endpoint, plain))
    finally:
        await server.stop(0)


async def test_the_server_name_can_differ_from_the_address_dialled(
    plain: Settings, pki: Pki
) -> None:
    server = build_server(mutual(plain, pki, pki.named), [], "127.0.0.1:0", drain_s=0)
    await server.start()
    try:
        # The certificate names registry.driftloop.internal, not 127.0.0.1.
        client = mutual(plain, pki)
        assert await refused(open_channel(server.endpoint, client)) == grpc.StatusCode.UNAVAILABLE
        named = with_tls(client, tls_server_name="registry.driftloop.internal")
        async with open_channel(server.endpoint, named) as channel:
            assert await health(channel) == SERVING
        # The probe blocks: in a thread, so this loop keeps serving.
        assert await asyncio.to_thread(probe, server.endpoint, settings=named)
        assert not await asyncio.to_thread(probe, server.endpoint, settings=client)
    finally:
        await server.stop(0)


def test_tls_settings_come_from_the_environment_and_are_checked(
    monkeypatch: pytest.MonkeyPatch, pki: Pki, tmp_path: Path
) -> None:
    monkeypatch.setenv("DRIFTLOOP_GRPC__TLS_CA_FILE", str(pki.ca))
    monkeypatch.setenv("DRIFTLOOP_GRPC__TLS_CERT_FILE", str(pki.service.cert))
    monkeypatch.setenv("DRIFTLOOP_GRPC__TLS_KEY_FILE", str(pki.service.key))
    monkeypatch.setenv("DRIFTLOOP_GRPC__TLS_SERVER_NAME", "localhost")
    settings = load_settings()
    assert settings.grpc.tls and settings.grpc.tls_require_client_cert
    assert (settings.grpc.tls_ca_file, settings.grpc.tls_server_name) == (pki.ca, "localhost")

    with pytest.raises(ValidationError, match=r"tls_cert_file and grpc\.tls_key_file go together"):
        GrpcSettings(tls_ca_file=pki.ca, tls_cert_file=pki.service.cert)
    # A server that must verify clients needs the CA that signs them.
    no_ca = Settings(
        grpc=GrpcSettings(tls_cert_file=pki.service.cert, tls_key_file=pki.service.key)
    )
    with pytest.raises(TlsConfigError, match=r"tls_require_client_cert needs grpc\.tls_ca_file"):
        build_server(no_ca, [], "127.0.0.1:0")
    missing = Settings(
        grpc=GrpcSettings(
            tls_ca_file=tmp_path / "nowhere.pem",
            tls_cert_file=pki.service.cert,
            tls_key_file=pki.service.key,
        )
    )
    with pytest.raises(TlsConfigError, match=r"grpc\.tls_ca_file: cannot read .*nowhere\.pem"):
        build_server(missing, [], "127.0.0.1:0")
    with pytest.raises(TlsConfigError, match=r"grpc\.tls_ca_file: cannot read"):
        open_channel("127.0.0.1:1", missing)


@pytest.fixture
async def registry(settings: Settings, pki: Pki, unique: str) -> AsyncIterator[RegistryService]:
    """The real registry service, serving with mutual TLS."""
    config = RegistrySettings(
        source_topic=f"t.models.trained.{unique}",
        deadletter_topic=f"t.deadletter.{unique}",
        group_id=f"g.registry.{unique}",
    )
    # The operator's certificate may administer, the services' may read; any
    # other certificate of the CA reaches the port but no method.
    served = with_tls(
        mutual(settings, pki), client_roles={"operator": ["admin"], "service": ["read"]}
    )
    service = RegistryService(served.for_service("registry"), config, "127.0.0.1:0")
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


async def run(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_the_registry_serves_its_clients_over_mutual_tls_only(
    registry: RegistryService, settings: Settings, pki: Pki
) -> None:
    client = mutual(settings, pki, pki.operator)
    async with open_channel(registry.endpoint, client) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        reply = await stub.ListModels(registry_pb2.ListModelsRequest(), timeout=5)
        assert list(reply.models) == []  # a fresh registry, reached
    async with insecure_channel(registry.endpoint, settings) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ListModels(registry_pb2.ListModelsRequest(), timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE

    # `driftloop status` asks health over TLS when configured, and fails without it.
    assert await grpc_serving(registry.endpoint, client)
    assert not await grpc_serving(registry.endpoint, settings)

    # The container health probe and the CLI read the same variables.
    base = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTLOOP_GRPC__")}
    tls_env = {
        **base,
        "DRIFTLOOP_GRPC__TLS_CA_FILE": str(pki.ca),
        "DRIFTLOOP_GRPC__TLS_CERT_FILE": str(pki.service.cert),
        "DRIFTLOOP_GRPC__TLS_KEY_FILE": str(pki.service.key),
    }
    probe_args = ("-m", "driftloop_core.grpc.health_probe", registry.endpoint)
    assert (await run(*probe_args, env=tls_env))[0] == 0
    assert (await run(*probe_args, env=base))[0] == 1

    cli = ("-m", "driftloop_cli", "models", "list", "--endpoint", registry.endpoint, "--json")
    code, out, err = await run(*cli, env=tls_env)
    assert code == 0, err
    assert json.loads(out) == {"versions": []}
    code, _, err = await run(*cli, env=base)
    assert code == 1 and "UNAVAILABLE" in err


async def test_a_certificate_holds_the_roles_its_names_are_given(
    registry: RegistryService, settings: Settings, pki: Pki
) -> None:
    async def call(issued: Issued, method: str, request: Any) -> grpc.StatusCode:
        async with open_channel(registry.endpoint, mutual(settings, pki, issued)) as channel:
            stub = registry_pb2_grpc.RegistryServiceStub(channel)
            try:
                await getattr(stub, method)(request, timeout=5)
            except grpc.aio.AioRpcError as error:
                return error.code()
            return grpc.StatusCode.OK

    listing = registry_pb2.ListModelsRequest()
    promote = registry_pb2.PromoteRequest(model="nobody", version=1, actor="mallory", reason="try")
    # Mapped to read by DRIFTLOOP_GRPC__CLIENT_ROLES: reads, never promotes.
    assert await call(pki.service, "ListModels", listing) == grpc.StatusCode.OK
    assert await call(pki.service, "Promote", promote) == grpc.StatusCode.PERMISSION_DENIED
    # The inference service's name holds read by itself.
    assert await call(pki.inference, "ListModels", listing) == grpc.StatusCode.OK
    assert await call(pki.inference, "Promote", promote) == grpc.StatusCode.PERMISSION_DENIED
    # A certificate of the same CA under a name nobody granted anything.
    assert await call(pki.named, "ListModels", listing) == grpc.StatusCode.PERMISSION_DENIED
    # The operator administers: the promote reaches the registry, which knows no
    # such model; the attempt is not refused for its credential.
    assert await call(pki.operator, "Promote", promote) == grpc.StatusCode.NOT_FOUND
