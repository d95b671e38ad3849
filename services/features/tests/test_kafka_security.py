"""Kafka SASL and SSL settings reach Faust as they reach aiokafka.

Every aiokafka client takes `KafkaSettings.client_options()`; the feature store's
Faust app gets the same security through `broker_credentials`. Faust turns those
credentials into aiokafka keyword arguments itself, so this compares what Faust
will hand aiokafka with what our own clients use, for each security protocol.
No broker is needed: nothing connects.
"""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from driftloop_core.settings import Settings, load_settings
from driftloop_features.adapters.faust_app import build_faust_app
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate and key that serve as a CA file and as a client certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kafka-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "kafka.pem", folder / "kafka.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def faust_auth(settings: Settings) -> dict[str, Any]:
    """What Faust's aiokafka driver passes to its consumer and producer."""
    conf = build_faust_app(settings).app.conf
    return dict(credentials_to_aiokafka_auth(conf.broker_credentials, conf.ssl_context))


@pytest.mark.parametrize("protocol", ["SASL_SSL", "SASL_PLAINTEXT"])
def test_sasl_credentials_reach_faust_and_aiokafka_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, protocol: str
) -> None:
    cafile, _ = self_signed(tmp_path)
    monkeypatch.setenv("DRIFTLOOP_KAFKA__SECURITY_PROTOCOL", protocol)
    monkeypatch.setenv("DRIFTLOOP_KAFKA__SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("DRIFTLOOP_KAFKA__SASL_USERNAME", "driftloop")
    monkeypatch.setenv("DRIFTLOOP_KAFKA__SASL_PASSWORD", "kafka-s3cret")
    monkeypatch.setenv("DRIFTLOOP_KAFKA__SSL_CAFILE", str(cafile))
    settings = load_settings(home=tmp_path / "home")

    ours = settings.kafka.client_options()
    theirs = faust_auth(settings)
    for key in ("security_protocol", "sasl_mechanism", "sasl_plain_username"):
        assert theirs[key] == ours[key], key
    assert (ours["security_protocol"], ours["sasl_mechanism"]) == (protocol, "SCRAM-SHA-512")
    assert theirs["sasl_plain_password"] == ours["sasl_plain_password"] == "kafka-s3cret"
    if protocol == "SASL_SSL":
        assert isinstance(theirs["ssl_context"], ssl.SSLContext)
        assert isinstance(ours["ssl_context"], ssl.SSLContext)
        # The CA file is loaded in both: each context trusts exactly that one.
        for context in (theirs["ssl_context"], ours["ssl_context"]):
            assert [c["subject"] for c in context.get_ca_certs()] == [
                ((("commonName", "kafka-test"),),)
            ]
    else:
        assert theirs["ssl_context"] is None and "ssl_context" not in ours


def test_ssl_with_a_client_certificate_reaches_faust(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = self_signed(tmp_path)
    monkeypatch.setenv("DRIFTLOOP_KAFKA__SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("DRIFTLOOP_KAFKA__SSL_CAFILE", str(cert))
    monkeypatch.setenv("DRIFTLOOP_KAFKA__SSL_CERTFILE", str(cert))
    monkeypatch.setenv("DRIFTLOOP_KAFKA__SSL_KEYFILE", str(key))
    settings = load_settings(home=tmp_path / "home")

    theirs = faust_auth(settings)
    assert theirs["security_protocol"] == settings.kafka.client_options()["security_protocol"]
    assert theirs["security_protocol"] == "SSL"
    context = theirs["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert len(context.get_ca_certs()) == 1


def test_plaintext_stays_plaintext(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path / "home")
    assert faust_auth(settings) == {"security_protocol": "PLAINTEXT"}
    assert settings.kafka.client_options()["security_protocol"] == "PLAINTEXT"
