"""Deny by default on a private stack: `driftloop up` with a token per role, probed
as an outsider would, with raw gRPC and with tritonclient (a client no one here
wrote).

Every method of every service is called three ways: without a credential
(UNAUTHENTICATED), with another role's token (PERMISSION_DENIED) and with its own
role's token, which gets past authorization to the service's own answer. Health
and OIP liveness answer anyone; reflection is off.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from driftloop.v1 import features_pb2, ingest_pb2, predictor_pb2, registry_pb2
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from support.stack import stack_env

pytestmark = pytest.mark.e2e

DRIFTLOOP = [sys.executable, "-m", "driftloop_cli"]
TOKENS = {
    "ingest": "tok-ingest",
    "read": "tok-read",
    "predict": "tok-predict",
    "admin": "tok-admin",
}
REFUSED = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}


@dataclass(frozen=True)
class Probe:
    endpoint: str  # which DRIFTLOOP_ENDPOINTS__ entry serves it
    method: str
    request: Message
    response: type[Message]
    role: str
    streaming: bool = False


PROBES = [
    Probe(
        "INGESTION",
        "/driftloop.v1.IngestService/Ingest",
        ingest_pb2.IngestRequest(json='{"event_id": "e1"}'),
        ingest_pb2.IngestResponse,
        "ingest",
    ),
    Probe(
        "FEATURES",
        "/driftloop.v1.FeatureService/GetOnlineFeatures",
        features_pb2.GetOnlineFeaturesRequest(entity_ids=["c1"]),
        features_pb2.GetOnlineFeaturesResponse,
        "read",
    ),
    Probe(
        "FEATURES",
        "/driftloop.v1.FeatureService/GetTrainingSet",
        features_pb2.GetTrainingSetRequest(),
        features_pb2.GetTrainingSetResponse,
        "read",
    ),
    Probe(
        "REGISTRY",
        "/driftloop.v1.RegistryService/ListModels",
        registry_pb2.ListModelsRequest(),
        registry_pb2.ListModelsResponse,
        "read",
    ),
    Probe(
        "REGISTRY",
        "/driftloop.v1.RegistryService/GetChampion",
        registry_pb2.GetChampionRequest(model="payments"),
        registry_pb2.GetChampionResponse,
        "read",
    ),
    Probe(
        "REGISTRY",
        "/driftloop.v1.RegistryService/DownloadArtifact",
        registry_pb2.DownloadArtifactRequest(model="payments", alias="champion"),
        registry_pb2.DownloadArtifactResponse,
        "read",
        streaming=True,
    ),
    Probe(
        "REGISTRY",
        "/driftloop.v1.RegistryService/Promote",
        registry_pb2.PromoteRequest(model="payments", version=1, reason="mine now"),
        registry_pb2.PromoteResponse,
        "admin",
    ),
    Probe(
        "INFERENCE",
        "/driftloop.v1.Predictor/Predict",
        predictor_pb2.PredictRequest(entity_id="c1", event_id="e1"),
        predictor_pb2.PredictResponse,
        "predict",
    ),
]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    folder = tmp_path_factory.mktemp("authz")
    env = stack_env(
        folder / "home", **{f"DRIFTLOOP_{role.upper()}_TOKEN": t for role, t in TOKENS.items()}
    )
    with (folder / "up.log").open("w") as log:
        up = subprocess.Popen([*DRIFTLOOP, "up"], env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 180
            while subprocess.run([*DRIFTLOOP, "status"], env=env, capture_output=True).returncode:
                assert up.poll() is None, (folder / "up.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "the stack did not get ready"
                time.sleep(1)
            yield env
        finally:
            up.terminate()
            up.wait(timeout=120)


def _code(env: dict[str, str], probe: Probe, token: str | None) -> grpc.StatusCode:
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    with grpc.insecure_channel(env[f"DRIFTLOOP_ENDPOINTS__{probe.endpoint}"]) as channel:
        try:
            if probe.streaming:
                call = channel.unary_stream(
                    probe.method,
                    request_serializer=type(probe.request).SerializeToString,
                    response_deserializer=probe.response.FromString,
                )
                list(call(probe.request, metadata=metadata, timeout=10))
            else:
                channel.unary_unary(
                    probe.method,
                    request_serializer=type(probe.request).SerializeToString,
                    response_deserializer=probe.response.FromString,
                )(probe.request, metadata=metadata, timeout=10)
        except grpc.RpcError as error:
            code: grpc.StatusCode = error.code()  # type: ignore[attr-defined]
            return code
    return grpc.StatusCode.OK


@pytest.mark.parametrize("probe", PROBES, ids=lambda p: p.method.rpartition("/")[2])
def test_every_method_needs_its_role(stack: dict[str, str], probe: Probe) -> None:
    assert _code(stack, probe, None) == grpc.StatusCode.UNAUTHENTICATED
    assert _code(stack, probe, "not-a-token") == grpc.StatusCode.UNAUTHENTICATED
    other = next(role for role in TOKENS if role not in (probe.role, "admin"))
    assert _code(stack, probe, TOKENS[other]) == grpc.StatusCode.PERMISSION_DENIED
    assert _code(stack, probe, TOKENS[probe.role]) not in REFUSED
    assert _code(stack, probe, TOKENS["admin"]) not in REFUSED


# tritonclient ships its own copy of the OIP protos (package `inference`, like
# ours): it runs in a process of its own, as a user's client would.
TRITON = """
import json, sys
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException
url, call, token, args = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
client = triton.InferenceServerClient(url)
headers = {"authorization": "Bearer " + token} if token else None
try:
    getattr(client, call)(*args, headers=headers)
    print("OK")
except InferenceServerException as error:
    print(error.status())
"""


def _triton(stack: dict[str, str], call: str, token: str | None, *args: Any) -> str:
    url = stack["DRIFTLOOP_ENDPOINTS__INFERENCE"]
    done = subprocess.run(
        [sys.executable, "-c", TRITON, url, call, token or "", json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_tritonclient_needs_the_predict_role(stack: dict[str, str]) -> None:
    # Liveness answers anyone, as a load balancer needs.
    assert _triton(stack, "is_server_live", None) == "OK"
    for call, args in (("get_model_metadata", ("payments",)), ("get_server_metadata", ())):
        assert _triton(stack, call, None, *args) == "StatusCode.UNAUTHENTICATED"
        assert _triton(stack, call, TOKENS["read"], *args) == "StatusCode.PERMISSION_DENIED"
        assert _triton(stack, call, TOKENS["predict"], *args) not in {
            "StatusCode.UNAUTHENTICATED",
            "StatusCode.PERMISSION_DENIED",
        }


def test_health_answers_anyone_and_reflection_is_off(stack: dict[str, str]) -> None:
    for name in ("INGESTION", "FEATURES", "REGISTRY", "INFERENCE"):
        with grpc.insecure_channel(stack[f"DRIFTLOOP_ENDPOINTS__{name}"]) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            reflect = channel.stream_stream(
                "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
            )
            with pytest.raises(grpc.RpcError) as off:
                list(
                    reflect(
                        iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                        metadata=(("authorization", f"Bearer {TOKENS['admin']}"),),
                        timeout=10,
                    )
                )
            assert off.value.code() == grpc.StatusCode.UNIMPLEMENTED  # type: ignore[attr-defined]


def test_the_cli_sends_the_token_of_its_environment(stack: dict[str, str], tmp_path: Path) -> None:
    reader = {k: v for k, v in stack.items() if not k.endswith("_TOKEN")}
    listing = [*DRIFTLOOP, "models", "list", "--json"]
    refused = subprocess.run(listing, env=reader, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "UNAUTHENTICATED" in refused.stderr
    reader["DRIFTLOOP_READ_TOKEN"] = TOKENS["read"]
    done = subprocess.run(listing, env=reader, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    promote = [*DRIFTLOOP, "models", "promote", "payments", "1", "--reason", "try"]
    denied = subprocess.run(promote, env=reader, capture_output=True, text=True, timeout=60)
    # The CLI has no admin token to send: the registry refuses the anonymous call.
    assert denied.returncode == 1 and "UNAUTHENTICATED" in denied.stderr
