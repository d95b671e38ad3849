"""Transport security for gRPC, from the `grpc` settings: off, TLS, or mutual TLS.

Servers and clients read the same three PEM files, so one set of variables
configures a whole deployment: the CA that signs every service's certificate,
and each process's own certificate and key. With mutual TLS (the default once
TLS is on) a server refuses any client that does not present a certificate the
CA signed, so only holders of a Driftloop certificate reach an RPC at all.

The files are read when a server is built or a channel opened, never at import,
and a missing or unreadable one is a `TlsConfigError` naming the setting.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from driftloop_core.settings import GrpcSettings

__all__ = ["TlsConfigError", "channel_credentials", "server_credentials"]


class TlsConfigError(ValueError):
    """The TLS settings cannot make credentials: a file is missing or one is lacking."""


def _read(setting: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise TlsConfigError(
            f"grpc.{setting}: cannot read {path}: {error.strerror or error}"
        ) from error


def server_credentials(config: GrpcSettings) -> grpc.ServerCredentials | None:
    """Credentials for a server's port; None when TLS is off (plaintext)."""
    if not config.tls:
        return None
    if config.tls_cert_file is None or config.tls_key_file is None:
        raise TlsConfigError(
            "a TLS server needs its certificate: set grpc.tls_cert_file and grpc.tls_key_file"
        )
    if config.tls_require_client_cert and config.tls_ca_file is None:
        raise TlsConfigError(
            "grpc.tls_require_client_cert needs grpc.tls_ca_file, the CA that signs "
            "client certificates"
        )
    ca = _read("tls_ca_file", config.tls_ca_file) if config.tls_ca_file else None
    return grpc.ssl_server_credentials(
        [
            (
                _read("tls_key_file", config.tls_key_file),
                _read("tls_cert_file", config.tls_cert_file),
            )
        ],
        root_certificates=ca,
        require_client_auth=config.tls_require_client_cert,
    )


def channel_credentials(config: GrpcSettings) -> grpc.ChannelCredentials | None:
    """Credentials for a client channel; None when TLS is off (plaintext).

    Servers are verified against `tls_ca_file` (the system's roots when unset);
    the process's certificate, when it has one, is presented for mutual TLS.
    """
    if not config.tls:
        return None
    ca = _read("tls_ca_file", config.tls_ca_file) if config.tls_ca_file else None
    key = _read("tls_key_file", config.tls_key_file) if config.tls_key_file else None
    cert = _read("tls_cert_file", config.tls_cert_file) if config.tls_cert_file else None
    return grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )
