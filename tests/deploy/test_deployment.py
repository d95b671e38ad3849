"""The deployment files users run elsewhere, validated here without a Docker
engine or a cluster: the compose file against the compose-spec schema, the
Kubernetes manifests against the API schemas, and what each must provide."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from driftloop_core.featureset import default_featureset_path
from driftloop_core.kafka import Topics
from driftloop_core.settings import Endpoints, KafkaSettings

ROOT = Path(__file__).resolve().parents[2]
SERVICES = sorted(p.parent.name for p in ROOT.glob("services/*/pyproject.toml"))
KUBERNETES_VERSION = "1.33"


def test_every_service_is_deployable() -> None:
    assert set(SERVICES) == {"ingestion", "features", "registry", "trainer", "inference", "drift"}


def test_compose_file_is_valid_against_the_compose_spec() -> None:
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("check-jsonschema")),
            "--builtin-schema",
            "vendor.compose-spec",
            str(ROOT / "docker-compose.yml"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def test_compose_runs_the_production_parts() -> None:
    services = compose()["services"]
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert "controller" in kafka["environment"]["KAFKA_PROCESS_ROLES"], "KRaft mode"
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["minio"]["image"].startswith("minio/minio")
    assert services["jaeger"]["image"].startswith("jaegertracing/")
    assert services["prometheus"]["image"].startswith("prom/prometheus")
    assert services["grafana"]["image"].startswith("grafana/grafana")
    registry_env = services["registry"]["environment"]
    assert registry_env["DRIFTLOOP_REGISTRY_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert registry_env["DRIFTLOOP_ARTIFACTS_URL"].startswith("s3://")
    assert registry_env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4317"


@pytest.mark.parametrize("name", SERVICES)
def test_compose_service_has_a_health_check_and_waits_for_its_topics(name: str) -> None:
    service = compose()["services"][name]
    assert service["build"]["dockerfile"] == f"services/{name}/Dockerfile"
    port = getattr(Endpoints(), name).rpartition(":")[2]
    assert service["healthcheck"]["test"][-1] == f"127.0.0.1:{port}"
    assert service["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    assert service["environment"]["DRIFTLOOP_KAFKA_BOOTSTRAP"] == "kafka:9092"


def test_prometheus_scrapes_every_service() -> None:
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets = {
        target
        for job in config["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    assert targets == {f"{name}:9464" for name in SERVICES}


def test_grafana_is_provisioned_with_both_data_sources_and_the_loop_dashboard() -> None:
    sources = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/datasources.yml").read_text()
    )
    assert {s["type"] for s in sources["datasources"]} == {"prometheus", "jaeger"}
    dashboard = yaml.safe_load((ROOT / "deploy/grafana/dashboards/driftloop.json").read_text())
    titles = " ".join(panel["title"].lower() for panel in dashboard["panels"])
    for topic in ("ingested", "latency", "drift", "version"):
        assert topic in titles


@pytest.mark.parametrize("name", SERVICES)
def test_dockerfile_is_multi_stage_non_root_frozen_and_health_checked(name: str) -> None:
    text = (ROOT / "services" / name / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2, "multi-stage"
    assert "uv sync --frozen" in text
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and not user[-1].startswith(("root", "0")), "runs as a non-root user"
    port = getattr(Endpoints(), name).rpartition(":")[2]
    assert f'driftloop_core.grpc.health_probe", "127.0.0.1:{port}"' in text
    assert f'ENTRYPOINT ["python", "-m", "driftloop_{name}"]' in text


@functools.cache
def rendered(overlay: str) -> list[dict[str, Any]]:
    """The overlay built by kustomize (kubectl's), else the base resources as they are."""
    kubectl = shutil.which("kubectl")
    if kubectl:
        done = subprocess.run(
            [kubectl, "kustomize", str(ROOT / "k8s" / "overlays" / overlay)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    base = ROOT / "k8s" / "base"
    kustomization = yaml.safe_load((base / "kustomization.yaml").read_text())
    docs = [
        doc
        for resource in kustomization["resources"]
        for doc in yaml.safe_load_all((base / resource).read_text())
        if doc
    ]
    overlay_dir = ROOT / "k8s" / "overlays" / overlay
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for patch in yaml.safe_load((overlay_dir / "kustomization.yaml").read_text()).get(
        "patches", []
    ):
        for doc in yaml.safe_load_all((overlay_dir / patch["path"]).read_text()):
            if isinstance(doc, dict) and "kind" in doc:
                assert (doc["kind"], doc["metadata"]["name"]) in names, patch
    return docs


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_manifests_are_valid_kubernetes(overlay: str) -> None:
    for doc in rendered(overlay):
        if doc["kind"] == "KafkaTopic":
            continue
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_each_service_is_deployed_hardened_and_probed_over_grpc(overlay: str) -> None:
    docs = rendered(overlay)
    by_kind: dict[str, dict[str, dict[str, Any]]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    for name in SERVICES:
        port = int(getattr(Endpoints(), name).rpartition(":")[2])
        pod = by_kind["Deployment"][name]["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        [container] = pod["containers"]
        assert container["readinessProbe"]["grpc"]["port"] == port
        assert container["livenessProbe"]["grpc"]["port"] == port
        assert container["resources"]["requests"] and container["resources"]["limits"]
        hardened = container["securityContext"]
        assert hardened["readOnlyRootFilesystem"] is True
        assert hardened["allowPrivilegeEscalation"] is False
        assert hardened["capabilities"]["drop"] == ["ALL"]
        assert by_kind["Service"][name]["spec"]["ports"][0]["port"] == port
        assert name in by_kind["PodDisruptionBudget"]
    assert by_kind["HorizontalPodAutoscaler"]["inference"]["spec"]["scaleTargetRef"]["name"] == (
        "inference"
    )


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_topics_are_strimzi_resources_with_the_configured_partitions(overlay: str) -> None:
    topics = [doc for doc in rendered(overlay) if doc["kind"] == "KafkaTopic"]
    assert {t["spec"]["topicName"] for t in topics} == set(Topics.all())
    for topic in topics:
        assert topic["apiVersion"] == "kafka.strimzi.io/v1beta2"
        assert topic["metadata"]["labels"]["strimzi.io/cluster"]
        assert topic["spec"]["partitions"] == KafkaSettings().partitions


def test_feature_set_config_map_is_the_built_in_feature_set() -> None:
    assert (ROOT / "k8s/base/payments.yaml").read_text() == (default_featureset_path().read_text())


def test_every_metric_on_the_dashboard_is_exported_by_the_code() -> None:
    dashboard = (ROOT / "deploy/grafana/dashboards/driftloop.json").read_text()
    wanted = set(re.findall(r"driftloop_[a-z_]+", dashboard)) - {"driftloop_loop"}
    source = "\n".join(
        path.read_text()
        for root in ("libs", "services")
        for path in (ROOT / root).glob("*/src/**/*.py")
    )
    defined = set(re.findall(r'"(driftloop_[a-z_]+)"', source))
    # Histograms are queried through their _bucket series.
    missing = {name for name in wanted if name.removesuffix("_bucket") not in defined}
    assert not missing, f"dashboard queries metrics no service exports: {sorted(missing)}"
