"""The deployment files users run elsewhere, validated here without a Docker
engine or a cluster: the compose file against the compose-spec schema, the
Kubernetes manifests against the API schemas, and what each must provide,
least privilege included: the Secrets, certificates and network paths each
service gets are those it uses, and no more."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from driftloop_core.featureset import default_featureset_path
from driftloop_core.grpc.auth import (
    METHOD_ROLES,
    SERVICE_IDENTITIES,
    Authorizer,
    Role,
    bearer_metadata,
    role_tokens,
)
from driftloop_core.kafka import Topics
from driftloop_core.settings import Endpoints, KafkaSettings, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
SERVICES = sorted(p.parent.name for p in ROOT.glob("services/*/pyproject.toml"))
KUBERNETES_VERSION = "1.33"
PROBES = ("readinessProbe", "livenessProbe", "startupProbe")
HEALTH_PROBE = ["python", "-m", "driftloop_core.grpc.health_probe"]
# The Secrets the mtls component (k8s/components/mtls) mounts, one per service:
# CA, the service's own certificate and its key.
TLS_SECRET_PREFIX = "driftloop-grpc-tls"


def tls_secret(name: str) -> str:
    return f"{TLS_SECRET_PREFIX}-{name}"


# The Secret holding each role's bearer token, under the variable's name.
TOKEN_SECRETS = {
    Role.INGEST: "driftloop-ingest-token",
    Role.READ: "driftloop-read-token",
    Role.PREDICT: "driftloop-predict-token",
    Role.ADMIN: "driftloop-admin",
}
# The gRPC services each Driftloop service serves (method prefixes of METHOD_ROLES).
SERVES = {
    "ingestion": ("/driftloop.v1.IngestService/",),
    "features": ("/driftloop.v1.FeatureService/",),
    "registry": ("/driftloop.v1.RegistryService/",),
    "inference": ("/driftloop.v1.Predictor/", "/inference.GRPCInferenceService/"),
    "trainer": (),
    "drift": (),
}
# Who calls whom inside the deployment, and what.
CALLS = {
    "inference": {
        "features": ["GetOnlineFeatures"],
        "registry": ["GetChampion", "DownloadArtifact"],
    },
    "trainer": {
        "features": ["GetTrainingSet"],
        "registry": ["GetChampion", "DownloadArtifact"],
    },
    "drift": {"registry": ["GetChampion", "GetVersion"]},
}
# Calls between the pods of one service, on a port of their own: a feature-store
# worker forwards a lookup to the worker owning the entity's partition.
PEER_CALLS = {"features": ("route", "/driftloop.v1.FeatureService/GetOnlineFeatures")}
PROTO_SERVICES = {
    "features": "/driftloop.v1.FeatureService/",
    "registry": "/driftloop.v1.RegistryService/",
}
# Secrets other than tokens: the object store (the trainer writes artifacts, the
# registry reads them; inference gets them from the registry) and the database.
OTHER_SECRETS = {
    "registry": {"driftloop-artifacts-reader", "driftloop-registry-db"},
    "trainer": {"driftloop-artifacts-writer"},
}


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


def test_prod_mounts_each_service_its_own_certificate_and_turns_mutual_tls_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    docs = kustomized("prod")
    for name in SERVICES:
        pod = by_kind(docs)["Deployment"][name]["spec"]["template"]["spec"]
        # Its own certificate, and no other service's: a pod that leaks its key
        # can speak as itself only.
        [volume] = [v for v in pod["volumes"] if v.get("secret", {}).get("secretName")]
        assert volume["secret"]["secretName"] == tls_secret(name)
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
    # The README's commands make the Secrets with the keys the services read.
    readme = (ROOT / "README.md").read_text()
    # One Secret per service, made in a loop over the services.
    assert f'create secret generic {TLS_SECRET_PREFIX}-"$service"' in readme
    for key in ("ca.crt", "tls.crt", "tls.key"):
        assert f"--from-file={key}=" in readme


def test_cert_manager_example_issues_each_service_the_certificate_it_mounts(
    tmp_path: Path,
) -> None:
    """The optional component k8s/components/mtls-cert-manager beside prod: each
    service's Certificate writes the Secret that service mounts, names the
    service as clients dial it and as the servers authorize it, and holds the
    address the exec probe dials."""
    if shutil.which("kubectl") is None:
        pytest.skip("needs kubectl kustomize to combine the overlay and the component")
    k8s = Path(os.path.relpath(ROOT / "k8s", tmp_path))
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [str(k8s / "overlays" / "prod")],
                "components": [str(k8s / "components" / "mtls-cert-manager")],
            }
        )
    )
    done = subprocess.run(
        [str(shutil.which("kubectl")), "kustomize", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    docs = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    found = by_kind(docs)
    certificates = {
        c["spec"]["secretName"]: c["spec"]
        for c in found["Certificate"].values()
        if not c["spec"].get("isCA")
    }
    assert set(certificates) == {tls_secret(name) for name in SERVICES}
    for name in SERVICES:
        spec = certificates[tls_secret(name)]
        [container] = found["Deployment"][name]["spec"]["template"]["spec"]["containers"]
        dialed = container_env(container, docs)[f"DRIFTLOOP_ENDPOINTS__{name.upper()}"]
        assert spec["commonName"] == name
        assert spec["dnsNames"] == [dialed.rpartition(":")[0]], name
        assert spec["ipAddresses"] == ["127.0.0.1"], name
        assert {"server auth", "client auth"} <= set(spec["usages"]), name
        assert spec["issuerRef"]["name"] in found["Issuer"], name
    # The callers' certificates carry the names the servers grant "read" to.
    assert {certificates[tls_secret(n)]["commonName"] for n in SERVICE_IDENTITIES} == set(
        SERVICE_IDENTITIES
    )
    for doc in docs:
        if doc["apiVersion"].startswith(("cert-manager.io/", "kafka.strimzi.io/")):
            continue  # custom resources: their CRDs' schemas are not here
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


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


def checked_roles(name: str) -> set[Role]:
    """The roles whose tokens ``name`` checks: those its methods need."""
    return {
        role
        for method, role in METHOD_ROLES.items()
        if role is not None and SERVES[name] and method.startswith(SERVES[name])
    }


def sent_roles(name: str) -> set[Role]:
    """The roles whose tokens ``name`` sends to the services it calls."""
    methods = [
        PROTO_SERVICES[server] + method
        for server, called in CALLS.get(name, {}).items()
        for method in called
    ]
    if name in PEER_CALLS:
        methods.append(PEER_CALLS[name][1])
    return {role for method in methods if (role := METHOD_ROLES[method]) is not None}


def pod_secrets(pod: dict[str, Any]) -> set[str]:
    """Every Secret a pod can read: as environment or as files."""
    names: set[str] = set()
    for container in pod["containers"] + pod.get("initContainers", []):
        for source in container.get("envFrom", []):
            if "secretRef" in source:
                names.add(source["secretRef"]["name"])
        for var in container.get("env", []):
            if "secretKeyRef" in var.get("valueFrom", {}):
                names.add(var["valueFrom"]["secretKeyRef"]["name"])
    for volume in pod.get("volumes", []):
        if "secret" in volume:
            names.add(volume["secret"]["secretName"])
        for source in volume.get("projected", {}).get("sources", []):
            if "secret" in source:
                names.add(source["secret"]["name"])
    return names


def secret_env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The container's variables that come from a Secret: name -> secretKeyRef."""
    return {
        var["name"]: var["valueFrom"]["secretKeyRef"]
        for var in container.get("env", [])
        if "secretKeyRef" in var.get("valueFrom", {})
    }


def test_the_roles_follow_the_authorization_table() -> None:
    """The table the manifests below are held to, read from the code's own."""
    assert {name: checked_roles(name) for name in SERVICES} == {
        "ingestion": {Role.INGEST},
        "features": {Role.READ},
        "registry": {Role.READ, Role.ADMIN},
        "inference": {Role.PREDICT},
        "trainer": set(),
        "drift": set(),
    }
    # The services that call others are the ones the servers know by name.
    for name in SERVICES:
        assert sent_roles(name) == set(SERVICE_IDENTITIES.get(name, ())), name


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_each_pod_gets_only_the_secrets_it_uses(overlay: str) -> None:
    found = by_kind(rendered(overlay) if overlay == "dev" else kustomized(overlay))
    for name in SERVICES:
        pod = found["Deployment"][name]["spec"]["template"]["spec"]
        roles = checked_roles(name) | sent_roles(name)
        wanted = {TOKEN_SECRETS[role] for role in roles} | OTHER_SECRETS.get(name, set())
        if overlay == "prod":
            wanted.add(tls_secret(name))
        assert pod_secrets(pod) == wanted, name
        [container] = pod["containers"]
        # Key by key: a key added to a Secret later reaches no pod by itself.
        assert not [s for s in container.get("envFrom", []) if "secretRef" in s], name
        env = secret_env(container)
        for role, secret in TOKEN_SECRETS.items():
            variable = f"DRIFTLOOP_{role.value.upper()}_TOKEN"
            if role in roles:
                assert env[variable]["name"] == secret, (name, variable)
                assert env[variable]["key"] == variable, (name, variable)
                # Required: a pod without its token would run with authorization off.
                assert not env[variable].get("optional"), (name, variable)
            else:
                assert variable not in env, (name, variable)
    inference = found["Deployment"]["inference"]["spec"]["template"]["spec"]["containers"][0]
    assert "DRIFTLOOP_ADMIN_TOKEN" not in secret_env(inference)
    assert not any(var.startswith("AWS_") for var in secret_env(inference))


def pod_settings(
    name: str, docs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """The settings ``name``'s container starts with, each Secret key holding a
    value of its own."""
    [container] = by_kind(docs)["Deployment"][name]["spec"]["template"]["spec"]["containers"]
    with monkeypatch.context() as patched:
        for var in [v for v in os.environ if v.startswith(("DRIFTLOOP_", "AWS_"))]:
            patched.delenv(var)
        for var, value in container_env(container, docs).items():
            patched.setenv(var, value)
        for var, ref in secret_env(container).items():
            patched.setenv(var, f"{ref['name']}/{ref['key']}")
        return load_settings()


def test_every_call_the_deployment_makes_is_authorized_and_no_more(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A caller's token (from the Secret it is given) is one its server checks
    (from the Secret the server is given), for the calls it makes; what a
    service's tokens let it call ends there."""
    docs = rendered("dev")
    settings = {name: pod_settings(name, docs, monkeypatch) for name in SERVICES}
    servers = {name: Authorizer(settings[name]) for name in SERVICES}
    for caller, called in CALLS.items():
        tokens = role_tokens(settings[caller])
        for server, methods in called.items():
            for method in methods:
                role = METHOD_ROLES[PROTO_SERVICES[server] + method]
                assert role is not None
                token = tokens.get(role) or tokens.get(Role.ADMIN)
                granted = servers[server].token_caller(bearer_metadata(token))
                assert granted is not None and role in granted.roles, (caller, server, method)
    # Only the registry holds the admin token (it checks it); at any other
    # service, the tokens a service holds open reads and nothing more.
    for name in SERVICES:
        held = role_tokens(settings[name])
        assert Role.ADMIN not in held or name == "registry", name
        for server in set(SERVICES) - {name}:
            for token in held.values():
                granted = servers[server].token_caller(bearer_metadata(token))
                assert granted is None or granted.roles <= {Role.READ}, (name, server, granted)
    # Every server enforces: none is left open to anyone who reaches its port.
    for name, authorizer in servers.items():
        if checked_roles(name):
            assert authorizer.enforced, name


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert not selector.get("matchExpressions"), "only matchLabels here"
    return all(labels.get(key) == value for key, value in selector.get("matchLabels", {}).items())


def pod_ports(found: dict[str, dict[str, dict[str, Any]]], name: str) -> dict[str, int]:
    [container] = found["Deployment"][name]["spec"]["template"]["spec"]["containers"]
    return {port["name"]: port["containerPort"] for port in container["ports"]}


def peers(
    found: dict[str, dict[str, dict[str, Any]]], name: str, port: str, direction: str
) -> list[dict[str, Any]]:
    """The peers the policies selecting ``name``'s pods let in (``ingress``)
    on its port named ``port``, or let out (``egress``) to anywhere."""
    labels = found["Deployment"][name]["spec"]["template"]["metadata"]["labels"]
    ports = pod_ports(found, name)
    allowed: list[dict[str, Any]] = []
    for policy in found.get("NetworkPolicy", {}).values():
        spec = policy["spec"]
        if direction.capitalize() not in spec["policyTypes"] or not selects(
            spec["podSelector"], labels
        ):
            continue
        for rule in spec.get(direction, []):
            rule_ports = [p["port"] for p in rule.get("ports", [])]
            if (
                direction == "ingress"
                and rule_ports
                and not (port in rule_ports or ports[port] in rule_ports)
            ):
                continue
            for peer in rule.get("from" if direction == "ingress" else "to", [{}]):
                allowed.append({**peer, "ports": rule_ports})
    return allowed


def callers_of(name: str) -> set[str]:
    return {caller for caller, called in CALLS.items() if name in called}


PUBLIC = {"ingestion", "inference"}
CLIENT_LABEL = {"driftloop.io/client": "true"}
OPERATOR_LABEL = {"driftloop.io/operator": "true"}
MONITORING = {"kubernetes.io/metadata.name": "monitoring"}


def test_the_namespace_denies_ingress_and_driftloop_pods_egress_by_default() -> None:
    found = by_kind(rendered("dev"))
    policies = found["NetworkPolicy"].values()
    assert [
        p
        for p in policies
        if p["spec"]["podSelector"] == {}
        and "Ingress" in p["spec"]["policyTypes"]
        and not p["spec"].get("ingress")
    ], "a default-deny ingress policy for every pod of the namespace"
    for name in SERVICES:
        labels = found["Deployment"][name]["spec"]["template"]["metadata"]["labels"]
        assert [
            p
            for p in policies
            if "Egress" in p["spec"]["policyTypes"] and selects(p["spec"]["podSelector"], labels)
        ], name


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_each_grpc_port_admits_its_callers_only(overlay: str) -> None:
    found = by_kind(rendered(overlay))
    for name in SERVICES:
        allowed = peers(found, name, "grpc", "ingress")
        for peer in allowed:
            # Never from anywhere: every peer names pods or namespaces by label.
            assert "ipBlock" not in peer, (name, peer)
            assert peer.get("podSelector", {}).get("matchLabels") or peer.get(
                "namespaceSelector", {}
            ).get("matchLabels"), (name, peer)
        services = {
            peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"]
            for peer in allowed
            if "app.kubernetes.io/name" in peer.get("podSelector", {}).get("matchLabels", {})
            and "namespaceSelector" not in peer
        }
        assert services == callers_of(name), name
        clients = [
            peer
            for peer in allowed
            if CLIENT_LABEL
            in (
                peer.get("podSelector", {}).get("matchLabels"),
                peer.get("namespaceSelector", {}).get("matchLabels"),
            )
        ]
        assert bool(clients) == (name in PUBLIC), name
        operators = [
            p for p in allowed if p.get("podSelector", {}).get("matchLabels") == OPERATOR_LABEL
        ]
        assert operators and all("namespaceSelector" not in p for p in operators), name
        # Metrics: from the monitoring namespace only.
        assert [
            {key: value for key, value in peer.items() if key != "ports"}
            for peer in peers(found, name, "metrics", "ingress")
        ] == [{"namespaceSelector": {"matchLabels": MONITORING}}], name


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_a_workers_own_port_admits_its_peers_only(overlay: str) -> None:
    found = by_kind(rendered(overlay))
    for name, (port, _) in PEER_CALLS.items():
        allowed = peers(found, name, port, "ingress")
        assert allowed, name
        assert all(
            peer.get("podSelector", {}).get("matchLabels") == {"app.kubernetes.io/name": name}
            and "namespaceSelector" not in peer
            for peer in allowed
        ), (name, allowed)


def test_each_service_reaches_only_the_services_it_calls() -> None:
    found = by_kind(rendered("dev"))
    for name in SERVICES:
        out = peers(found, name, "grpc", "egress")
        reached = set()
        for target in SERVICES:
            target_port = pod_ports(found, target)["grpc"]
            for peer in out:
                selector = peer.get("podSelector", {}).get("matchLabels", {})
                if (
                    selector.get("app.kubernetes.io/name") == target
                    and target_port in peer["ports"]
                ):
                    reached.add(target)
        assert reached == set(CALLS.get(name, {})), name
        # Beyond the services: DNS, Kafka, the collector and the documented
        # placeholders (the object store, the database); nothing open on every port.
        assert all(peer["ports"] for peer in out), name


CREDENTIAL = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|ROOT_USER")
# ${VAR:?message} (required) or ${VAR:-} (optional, empty when unset).
FROM_ENVIRONMENT = re.compile(r"^\$\{[A-Z][A-Z0-9_]*(:\?[^}]*|:-)\}$")


def test_compose_publishes_ports_on_loopback_only() -> None:
    for name, service in compose()["services"].items():
        for port in service.get("ports", []):
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", (name, port)
            else:
                assert str(port).startswith("127.0.0.1:"), (name, port)


def test_compose_has_no_default_credentials() -> None:
    services = compose()["services"]
    for name, service in services.items():
        for var, value in (service.get("environment") or {}).items():
            if CREDENTIAL.search(var):
                assert FROM_ENVIRONMENT.match(str(value)), (name, var, value)
            for password in re.findall(r"://[^/:@\s]+:([^@\s]+)@", str(value)):
                assert FROM_ENVIRONMENT.match(password), (name, var)
        for command in (service.get("entrypoint"), service.get("command")):
            text = " ".join(command) if isinstance(command, list) else str(command or "")
            assert "driftloop-secret" not in text, name
    # The store and the database refuse to start without a password of the user's.
    for name, var in [("minio", "MINIO_ROOT_PASSWORD"), ("postgres", "POSTGRES_PASSWORD")]:
        assert services[name]["environment"][var].startswith(f"${{{var}:?"), (name, var)
    bucket = " ".join(services["minio-bucket"]["entrypoint"])
    assert '"$$MINIO_ROOT_USER" "$$MINIO_ROOT_PASSWORD"' in bucket


def test_compose_gives_each_service_the_credentials_of_kubernetes() -> None:
    services = compose()["services"]
    for name in SERVICES:
        env = services[name]["environment"]
        tokens = {var for var in env if var.startswith("DRIFTLOOP_") and var.endswith("_TOKEN")}
        roles = checked_roles(name) | sent_roles(name)
        assert tokens == {f"DRIFTLOOP_{r.value.upper()}_TOKEN" for r in roles}, name
        store = {var for var in env if var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
        assert bool(store) == any("artifacts" in s for s in OTHER_SECRETS.get(name, ())), name
        assert ("DRIFTLOOP_REGISTRY_DATABASE_URL" in env) == (name == "registry"), name


# sha256 of the Apache License 2.0 as apache.org publishes it (LICENSE-2.0.txt,
# md5 3b83ef96387f14655fc854ddc3c6bd57).
APACHE_2_SHA256 = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"


def test_the_repository_is_apache_2_licensed() -> None:
    license_text = (ROOT / "LICENSE").read_bytes()
    assert hashlib.sha256(license_text).hexdigest() == APACHE_2_SHA256, "the verbatim text"
    projects = [ROOT / "pyproject.toml", *sorted(ROOT.glob("libs/*/pyproject.toml"))]
    projects += sorted(ROOT.glob("services/*/pyproject.toml"))
    for path in projects:
        project = tomllib.loads(path.read_text())["project"]
        assert project.get("license") == "Apache-2.0", path.relative_to(ROOT)
    instructions = dict(dockerfile_stages()[-1])
    assert 'org.opencontainers.image.licenses="Apache-2.0"' in instructions["LABEL"]
