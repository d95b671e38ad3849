"""The deployment files users run elsewhere, validated here without a Docker
engine or a cluster: the compose file against the compose-spec schema, the
Kubernetes manifests against the API schemas, and what each must provide."""

from __future__ import annotations

import functools
import json
import os
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
from driftloop_core.settings import Endpoints, KafkaSettings, load_settings

ROOT = Path(__file__).resolve().parents[2]
SERVICES = sorted(p.parent.name for p in ROOT.glob("services/*/pyproject.toml"))
KUBERNETES_VERSION = "1.33"
PROBES = ("readinessProbe", "livenessProbe", "startupProbe")
HEALTH_PROBE = ["python", "-m", "driftloop_core.grpc.health_probe"]
# The Secret the mtls component (k8s/components/mtls) mounts: CA, certificate, key.
TLS_SECRET = "driftloop-grpc-tls"


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
    port = getattr(Endpoints(), name).rpartition(":")[2]
    # Every service is an image of the one root Dockerfile, named by its build arguments.
    assert service["build"] == {
        "context": ".",
        "dockerfile": "Dockerfile",
        "args": {"SERVICE": name, "PORT": port},
    }
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


DOCKERFILE = ROOT / "Dockerfile"


def test_services_have_no_dockerfiles_of_their_own() -> None:
    assert not list(ROOT.glob("services/*/Dockerfile")), "the root Dockerfile builds every service"


def test_compose_topics_runs_in_the_ingestion_image() -> None:
    services = compose()["services"]
    assert services["topics"]["build"] == services["ingestion"]["build"]
    assert services["topics"]["image"] == services["ingestion"]["image"]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in (raw.strip() for raw in text.splitlines())
        if line and not line.startswith("#")
    ]


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instruction, arguments in dockerfile_instructions():
        if instruction == "FROM":
            stages.append([])
        assert stages, f"{instruction} before the first FROM"
        stages[-1].append((instruction, arguments))
    return stages


def declared(stage: list[tuple[str, str]], kind: str) -> set[str]:
    """The names a stage declares with ARG or ENV (``kind``)."""
    names: set[str] = set()
    for instruction, arguments in stage:
        if instruction == kind:
            names.update(re.findall(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)(?==|\s|$)", arguments))
    return names


def test_dockerfile_is_multi_stage_non_root_frozen_and_health_checked() -> None:
    text = DOCKERFILE.read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2, "multi-stage"
    assert "uv sync --frozen" in text
    assert '--package "driftloop-$SERVICE" --package driftloop-cli' in text
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and not user[-1].startswith(("root", "0")), "runs as a non-root user"
    assert re.search(r"^EXPOSE \$\{PORT\} 9464$", text, re.M)
    instructions = dict(dockerfile_stages()[-1])
    assert "--interval=" in instructions["HEALTHCHECK"]


def test_dockerfile_stages_declare_the_build_arguments_they_use() -> None:
    """An ARG is in scope only in the stage that declares it (after its FROM), so
    each stage must re-declare SERVICE and PORT before using them."""
    for stage in dockerfile_stages():
        known = declared(stage, "ARG") | declared(stage, "ENV") | {"PATH"}
        for instruction, arguments in stage:
            if instruction in ("FROM", "HEALTHCHECK", "ENTRYPOINT", "CMD"):
                continue
            for used in re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", arguments):
                assert used in known, (instruction, arguments, used)
    final = dockerfile_stages()[-1]
    assert {"SERVICE", "PORT"} <= declared(final, "ARG")
    env = dict(dockerfile_instructions())["ENV"]  # the last ENV: the final stage's
    assert "DRIFTLOOP_SERVICE=${SERVICE}" in env.split()
    assert "DRIFTLOOP_SERVICE_PORT=${PORT}" in env.split()
    # Run time: the entrypoint and the health check read only variables the image sets.
    for instruction in ("HEALTHCHECK", "ENTRYPOINT"):
        for used in re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", dict(final)[instruction]):
            assert used in declared(final, "ENV"), (instruction, used)


def run_in_image_shell(command: list[str], name: str, tmp_path: Path) -> list[str]:
    """What ``command`` runs as the image would run it for service ``name``: a
    stand-in ``python`` prints its arguments, one a line."""
    fake = tmp_path / "python"
    fake.write_text('#!/bin/sh\nfor arg in "$@"; do echo "$arg"; done\n')
    fake.chmod(0o755)
    env = {
        "PATH": f"{tmp_path}:/usr/bin:/bin",
        "DRIFTLOOP_SERVICE": name,
        "DRIFTLOOP_SERVICE_PORT": str(service_port(name)),
    }
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=10)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


@pytest.mark.parametrize("name", SERVICES)
def test_dockerfile_runs_and_health_checks_the_service_it_was_built_for(
    name: str, tmp_path: Path
) -> None:
    assert (ROOT / "services" / name / "src" / f"driftloop_{name}" / "__main__.py").is_file()
    final = dict(dockerfile_stages()[-1])
    # Exec form, which Docker only takes when the array is valid JSON (else it
    # silently falls back to a shell), with `docker run` arguments passed on.
    entrypoint = json.loads(final["ENTRYPOINT"])
    assert run_in_image_shell([*entrypoint, "--flag"], name, tmp_path) == [
        "-m",
        f"driftloop_{name}",
        "--flag",
    ]
    options, _, check = final["HEALTHCHECK"].partition(" CMD ")
    assert "--timeout=" in options and not check.lstrip().startswith("[")
    # The shell form runs as /bin/sh -c; the same probe Compose and Kubernetes run.
    probe = run_in_image_shell(["/bin/sh", "-c", check], name, tmp_path)
    assert ["python", *probe] == compose()["services"][name]["healthcheck"]["test"][1:]


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
    overlay_kustomization = yaml.safe_load((overlay_dir / "kustomization.yaml").read_text())
    # Every patch of the overlay and of its components names a resource of the base.
    for folder in [
        overlay_dir,
        *(overlay_dir / c for c in overlay_kustomization.get("components", [])),
    ]:
        kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
        for patch in kustomization.get("patches", []):
            for doc in yaml.safe_load_all((folder / patch["path"]).read_text()):
                if isinstance(doc, dict) and "kind" in doc:
                    assert (doc["kind"], doc["metadata"]["name"]) in names, patch
    return docs


def without_handler(probe: dict[str, Any]) -> dict[str, Any]:
    """A probe's timings and thresholds, whatever it runs."""
    return {key: value for key, value in probe.items() if key not in ("grpc", "exec")}


def kustomized(overlay: str) -> list[dict[str, Any]]:
    """The overlay with its patches and components applied: only kustomize does
    that, so without kubectl the test is skipped."""
    if shutil.which("kubectl") is None:
        pytest.skip("needs kubectl kustomize to apply the overlay's patches and components")
    return rendered(overlay)


def by_kind(docs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    found: dict[str, dict[str, dict[str, Any]]] = {}
    for doc in docs:
        found.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    return found


def service_port(name: str) -> int:
    return int(getattr(Endpoints(), name).rpartition(":")[2])


def container_env(container: dict[str, Any], docs: list[dict[str, Any]]) -> dict[str, str]:
    """The variables a container gets from its ConfigMaps and its own `env`."""
    config_maps = by_kind(docs).get("ConfigMap", {})
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(config_maps[source["configMapRef"]["name"]]["data"])
    env.update({var["name"]: var["value"] for var in container.get("env", []) if "value" in var})
    return env


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_manifests_are_valid_kubernetes(overlay: str) -> None:
    for doc in rendered(overlay):
        if doc["kind"] == "KafkaTopic":
            continue
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_each_service_is_deployed_hardened_and_probed(overlay: str) -> None:
    found = by_kind(rendered(overlay))
    for name in SERVICES:
        pod = found["Deployment"][name]["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        [container] = pod["containers"]
        # Room for an exec probe, which starts Python (about 0.5 s) before it dials.
        for kind in PROBES:
            assert container[kind]["timeoutSeconds"] >= 3, (name, kind)
        assert container["resources"]["requests"] and container["resources"]["limits"]
        hardened = container["securityContext"]
        assert hardened["readOnlyRootFilesystem"] is True
        assert hardened["allowPrivilegeEscalation"] is False
        assert hardened["capabilities"]["drop"] == ["ALL"]
        assert found["Service"][name]["spec"]["ports"][0]["port"] == service_port(name)
        assert name in found["PodDisruptionBudget"]
    assert found["HorizontalPodAutoscaler"]["inference"]["spec"]["scaleTargetRef"]["name"] == (
        "inference"
    )


def test_dev_stays_plaintext_with_native_grpc_probes() -> None:
    docs = rendered("dev")
    for name in SERVICES:
        pod = by_kind(docs)["Deployment"][name]["spec"]["template"]["spec"]
        [container] = pod["containers"]
        for kind in PROBES:
            assert container[kind]["grpc"] == {"port": service_port(name)}, (name, kind)
            assert "exec" not in container[kind]
        assert not any(
            var.startswith("DRIFTLOOP_GRPC__TLS_") for var in container_env(container, docs)
        )
        assert not any(volume.get("secret") for volume in pod["volumes"])


def test_prod_probes_every_service_with_the_health_probe_and_the_base_timings() -> None:
    prod, dev = by_kind(kustomized("prod")), by_kind(kustomized("dev"))
    compose_services = compose()["services"]
    for deployment in prod["Deployment"].values():
        pod = deployment["spec"]["template"]["spec"]
        for container in pod["containers"] + pod.get("initContainers", []):
            for kind in PROBES:
                assert "grpc" not in container.get(kind, {}), "native gRPC probes cannot do TLS"
    for name in SERVICES:
        [container] = prod["Deployment"][name]["spec"]["template"]["spec"]["containers"]
        [plain] = dev["Deployment"][name]["spec"]["template"]["spec"]["containers"]
        for kind in PROBES:
            command = container[kind]["exec"]["command"]
            assert command == [*HEALTH_PROBE, f"127.0.0.1:{service_port(name)}"], (name, kind)
            # The same check Compose and the image's HEALTHCHECK run.
            assert command == compose_services[name]["healthcheck"]["test"][1:]
            assert without_handler(container[kind]) == without_handler(plain[kind]), (name, kind)


def test_prod_mounts_the_tls_secret_and_turns_mutual_tls_on_in_every_service(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    docs = kustomized("prod")
    for name in SERVICES:
        pod = by_kind(docs)["Deployment"][name]["spec"]["template"]["spec"]
        [volume] = [
            v for v in pod["volumes"] if v.get("secret", {}).get("secretName") == TLS_SECRET
        ]
        [container] = pod["containers"]
        [mount] = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
        assert mount["readOnly"] is True
        # What the service and its exec probes read: the environment the manifests give.
        for var in [v for v in os.environ if v.startswith("DRIFTLOOP_")]:
            monkeypatch.delenv(var)
        for var, value in container_env(container, docs).items():
            monkeypatch.setenv(var, value)
        tls = load_settings().grpc
        assert tls.tls and tls.tls_require_client_cert, name
        secret = Path(mount["mountPath"])
        assert (tls.tls_ca_file, tls.tls_cert_file, tls.tls_key_file) == (
            secret / "ca.crt",
            secret / "tls.crt",
            secret / "tls.key",
        ), name
    # The README's command makes the Secret with the keys the services read.
    readme = (ROOT / "README.md").read_text()
    assert f"kubectl create secret generic {TLS_SECRET}" in readme
    for key in ("ca.crt", "tls.crt", "tls.key"):
        assert f"--from-file={key}=" in readme


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
