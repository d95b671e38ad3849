"""Every knob of Driftloop, read once from `DRIFTLOOP_*` environment variables.

Services receive a `Settings` from their composition root; nothing reads the
environment anywhere else, so a test can hand any service a custom one.
Nested groups use a double underscore: `DRIFTLOOP_KAFKA__BOOTSTRAP_SERVERS`.
The most common ones also have short aliases (`DRIFTLOOP_KAFKA_BOOTSTRAP`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]


class KafkaSettings(BaseModel):
    """How every client reaches the broker, passed through to aiokafka and Faust."""

    bootstrap_servers: str = "127.0.0.1:9092"
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    client_id_prefix: str = "driftloop"
    # Partition count of every topic Driftloop creates; 4 matches what the
    # embedded broker gives a topic it auto-creates.
    partitions: int = Field(default=4, ge=1)
    replication_factor: int = Field(default=1, ge=1)
    # Off by default: the embedded broker rejects InitProducerId.
    enable_idempotence: bool = False
    request_timeout_ms: int = 30_000
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 1_000
    rebalance_timeout_ms: int = 10_000
    max_poll_records: int = 500
    retry_backoff_initial_s: float = 0.2
    retry_backoff_max_s: float = 5.0
    retry_attempts: int = Field(default=8, ge=1)

    def client_options(self) -> dict[str, Any]:
        """Connection and security keyword arguments common to aiokafka clients."""
        options: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
            "request_timeout_ms": self.request_timeout_ms,
        }
        if self.security_protocol in ("SSL", "SASL_SSL"):
            from aiokafka.helpers import create_ssl_context

            options["ssl_context"] = create_ssl_context(
                cafile=str(self.ssl_cafile) if self.ssl_cafile else None,
                certfile=str(self.ssl_certfile) if self.ssl_certfile else None,
                keyfile=str(self.ssl_keyfile) if self.ssl_keyfile else None,
            )
        if self.security_protocol.startswith("SASL"):
            options["sasl_mechanism"] = self.sasl_mechanism or "PLAIN"
            options["sasl_plain_username"] = self.sasl_username
            options["sasl_plain_password"] = (
                self.sasl_password.get_secret_value() if self.sasl_password else None
            )
        return options

    def faust_options(self) -> dict[str, Any]:
        """The same connection as Faust app settings, with failover timeouts that
        let a restarted worker rejoin in seconds instead of a minute."""
        scheme = "kafka://"
        broker = ";".join(scheme + host for host in self.bootstrap_servers.split(","))
        options: dict[str, Any] = {
            "broker": broker,
            "broker_session_timeout": self.session_timeout_ms / 1000,
            "broker_heartbeat_interval": self.heartbeat_interval_ms / 1000,
            "broker_rebalance_timeout": self.rebalance_timeout_ms / 1000,
            "producer_acks": -1,
            "topic_partitions": self.partitions,
            "topic_replication_factor": self.replication_factor,
        }
        return options


class Endpoints(BaseModel):
    """Where each service listens; all on loopback by default."""

    broker_port: int = 9092
    ingestion: str = "127.0.0.1:50051"
    features: str = "127.0.0.1:50052"
    registry: str = "127.0.0.1:50053"
    inference: str = "127.0.0.1:8001"
    drift: str = "127.0.0.1:50054"
    trainer: str = "127.0.0.1:50055"
    # Prometheus /metrics port of each service (0 turns a service's off).
    metrics: dict[str, int] = Field(
        default_factory=lambda: {
            "ingestion": 9101,
            "features": 9102,
            "registry": 9103,
            "inference": 9104,
            "drift": 9105,
            "trainer": 9106,
        }
    )


class GrpcSettings(BaseModel):
    """Limits and transport security of every gRPC server and client.

    TLS is on when a CA or a certificate is given (`DRIFTLOOP_GRPC__TLS_CA_FILE`,
    `__TLS_CERT_FILE`, `__TLS_KEY_FILE`, PEM files). One certificate serves both
    ways: servers present it, and clients present it to servers that require a
    client certificate (mutual TLS, the default when TLS is on). The CA verifies
    the other side: servers' certificates for clients, clients' for servers.
    """

    # Interface servers listen on instead of their endpoint's host, e.g. 0.0.0.0
    # in a container, where the endpoint names the service for its clients.
    bind_host: str | None = None
    max_message_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    max_concurrent_rpcs: int = Field(default=1024, ge=1)
    grace_period_s: float = 5.0
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # Servers refuse a client without a certificate signed by the CA.
    tls_require_client_cert: bool = True
    # The name clients check the server certificate against instead of the host
    # they dial, e.g. when a health probe dials 127.0.0.1 but the certificate
    # names the service.
    tls_server_name: str | None = None
    # Under mutual TLS, the roles a client certificate's names hold (common name
    # or a subject alternative name), as JSON: {"ops-alice": ["admin"],
    # "checkout": ["predict"]}. The services that call others (inference,
    # trainer, drift) hold "read" by name without being listed.
    client_roles: dict[str, list[Literal["ingest", "read", "predict", "admin"]]] = Field(
        default_factory=dict
    )
    # gRPC server reflection (grpcurl without protos); off unless asked for,
    # and then it needs the "read" role like any other read.
    reflection: bool = False

    @property
    def tls(self) -> bool:
        """Whether servers and clients speak TLS."""
        return self.tls_ca_file is not None or self.tls_cert_file is not None

    @model_validator(mode="after")
    def _certificate_with_its_key(self) -> GrpcSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError(
                "grpc.tls_cert_file and grpc.tls_key_file go together: set both or neither"
            )
        return self


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="DRIFTLOOP_",
        env_nested_delimiter="__",
        extra="ignore",
        populate_by_name=True,
    )

    home: Path = Path(".driftloop")
    featureset: Path | None = None
    service_name: str = "driftloop"
    service_version: str = "0.1.0"
    environment: str = "dev"
    log_level: str = "INFO"
    # Bearer tokens, one per role (see driftloop_core.grpc.auth for the table of
    # who may call what). Setting any of them turns authorization on: from then
    # on a call needs a credential holding its method's role. Servers check the
    # tokens they are given; clients send the one a method needs.
    # admin: Promote and Rollback, and every other role.
    admin_token: SecretStr | None = None
    # ingest: Ingest and IngestStream (`driftloop ingest` sends it).
    ingest_token: SecretStr | None = None
    # read: feature lookups, training sets, the registry's reads and artifacts.
    read_token: SecretStr | None = None
    # predict: Predict and the Open Inference Protocol's model calls.
    predict_token: SecretStr | None = None
    # Where model artifacts live, content-addressed by sha256: a local folder
    # (default: DRIFTLOOP_HOME/artifacts) or any fsspec URL (s3://bucket/prefix).
    artifacts_url: str | None = None
    # An S3-compatible store that is not AWS (MinIO, Ceph, moto): its endpoint,
    # e.g. http://minio:9000. Credentials come from the usual AWS_* variables.
    artifacts_endpoint_url: str | None = None
    # Any other fsspec storage options for artifacts_url, as a JSON object:
    # DRIFTLOOP_ARTIFACTS_OPTIONS='{"client_kwargs": {"region_name": "eu-west-1"}}'.
    artifacts_options: dict[str, Any] = Field(default_factory=dict)
    # The largest model artifact stored, registered or downloaded; larger ones
    # are refused before they are read whole into memory.
    artifacts_max_bytes: int = Field(default=256 * 1024 * 1024, ge=1)
    # Set to false to require an external broker instead of the embedded one.
    embedded_broker: bool = True
    # One /metrics port for this process, overriding endpoints.metrics: in a
    # container every service uses the same one (9464).
    metrics_port: int | None = None
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    endpoints: Endpoints = Field(default_factory=Endpoints)
    grpc: GrpcSettings = Field(default_factory=GrpcSettings)
    # Short alias for the most used knob.
    kafka_bootstrap: str | None = Field(
        default=None,
        validation_alias=AliasChoices("DRIFTLOOP_KAFKA_BOOTSTRAP", "kafka_bootstrap"),
    )
    otlp_endpoint: str | None = Field(
        default=None,
        validation_alias=AliasChoices("OTEL_EXPORTER_OTLP_ENDPOINT", "otlp_endpoint"),
    )
    # The share of per-event traces kept (a gRPC request, a record from outside);
    # the loop's own traces are always kept (see telemetry.sampling).
    trace_sample_ratio: float = Field(default=1.0, ge=0.0, le=1.0)

    def model_post_init(self, __context: Any) -> None:
        if self.kafka_bootstrap:
            self.kafka.bootstrap_servers = self.kafka_bootstrap

    @property
    def run_dir(self) -> Path:
        """Pid files and supervisor state."""
        return self.home / "run"

    @property
    def traces_dir(self) -> Path:
        """OTLP-JSON lines written when no collector is configured."""
        return self.home / "traces"

    @property
    def ephemeral_dir(self) -> Path:
        """State that only mirrors the broker (e.g. Faust table stores): cleared
        when `driftloop up` starts a fresh in-memory broker."""
        return self.home / "ephemeral"

    @property
    def artifacts_location(self) -> str:
        return self.artifacts_url or str(self.home / "artifacts")

    @property
    def artifacts_storage_options(self) -> dict[str, Any]:
        """Keyword arguments for the fsspec filesystem behind `artifacts_location`."""
        options = dict(self.artifacts_options)
        if self.artifacts_endpoint_url:
            options["endpoint_url"] = self.artifacts_endpoint_url
        return options

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    def metrics_port_for(self, service: str) -> int:
        """Where ``service`` serves Prometheus metrics; 0 means nowhere."""
        if self.metrics_port is not None:
            return self.metrics_port
        return self.endpoints.metrics.get(service, 0)

    def for_service(self, name: str, version: str | None = None) -> Settings:
        """A copy naming the service that will use it (for telemetry and client ids)."""
        return self.model_copy(
            update={"service_name": name, "service_version": version or self.service_version}
        )


def load_settings(**overrides: Any) -> Settings:
    """Read the environment once; keyword overrides win (used by tests and the CLI)."""
    return Settings(**overrides)
