"""Labelled events in, a registered champion out: the training path through real
processes (`driftloop up`: ingestion, feature store, trainer, registry), served by
inference scaled out to two processes (`DRIFTLOOP_INFERENCE_WORKERS=2`) which
follow every change of champion, by hand or back, each on its own."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from driftloop.v1 import features_pb2, features_pb2_grpc, predictor_pb2, predictor_pb2_grpc
from driftloop_testing import produce_json, wait_until
from inference import grpc_service_pb2 as oip
from inference import grpc_service_pb2_grpc as oip_grpc
from support.sockets import accepted_by, client_ports, copies_of
from support.stack import stack_env

pytestmark = pytest.mark.e2e

DRIFTLOOP = [sys.executable, "-m", "driftloop_cli"]
WORKERS = 2
# Fresh connections asked per check: the kernel spreads them over the workers
# by their addresses' hash, so all of them reach one worker 1 time in 2**39.
CONNECTIONS = 40
# One row of each input type ModelInfer may take, for whatever inputs the model has.
ONE_VALUE = {
    "BYTES": ("bytes_contents", b"atm"),
    "FP32": ("fp32_contents", 480.0),
    "FP64": ("fp64_contents", 480.0),
    "INT64": ("int64_contents", 2),
    "INT32": ("int_contents", 2),
}
# The version a connection was told: by ModelMetadata, ModelInfer and Predict.
Told = tuple[str, str, int]


def run(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*DRIFTLOOP, *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def labelled_events(count: int) -> list[dict[str, object]]:
    """Fraud is large ATM withdrawals: learnable from the raw fields."""
    rng = random.Random(17)
    now = int(time.time() * 1000)
    events = []
    for i in range(count):
        channel = rng.choice(["web", "pos", "atm"])
        amount = round(rng.uniform(1, 500), 2)
        hour = rng.randrange(24)
        fraud = int(channel == "atm" and amount > 250)
        if rng.random() < 0.02:
            fraud = 1 - fraud
        events.append(
            {
                "event_id": f"tr-{i}",
                "customer_id": f"cust-{rng.randrange(40)}",
                "ts": now - 600_000 + i * (590_000 // count),
                "amount": amount,
                "channel": channel,
                "hour": hour,
                "is_fraud": fraud,
            }
        )
    return events


async def produce(bootstrap: str, events: list[dict[str, object]]) -> None:
    # Keyed by customer, as a producer keeps one entity's events in order: the
    # events span ten minutes, and unkeyed ones could reach the feature store
    # more than its five-minute grace apart, to be dead-lettered as late.
    await produce_json(bootstrap, events, key_field="customer_id")


def training_rows(target: str) -> int:
    """Labelled rows the feature store would train on now (0 while it does not answer)."""
    with grpc.insecure_channel(target) as channel:
        stub = features_pb2_grpc.FeatureServiceStub(channel)
        try:
            reply = stub.GetTrainingSet(
                features_pb2.GetTrainingSetRequest(model="payments"), timeout=10
            )
        except grpc.RpcError:
            return 0
    return int(reply.dataset.row_count)


def one_row(metadata: oip.ModelMetadataResponse) -> oip.ModelInferRequest:
    request = oip.ModelInferRequest(model_name=metadata.name)
    for tensor in metadata.inputs:
        field, value = ONE_VALUE[tensor.datatype]
        request.inputs.add(
            name=tensor.name,
            datatype=tensor.datatype,
            shape=[1] + [1] * (len(tensor.shape) - 1),
            contents=oip.InferTensorContents(**{field: [value]}),
        )
    return request


def ask(channel: grpc.Channel, entity: str) -> Told:
    """The served version, as ModelMetadata (its first, the current one),
    ModelInfer and Predict (for the alias "champion") report it."""
    stub = oip_grpc.GRPCInferenceServiceStub(channel)
    metadata = stub.ModelMetadata(oip.ModelMetadataRequest(name="payments"), timeout=10)
    inferred = stub.ModelInfer(one_row(metadata), timeout=10)
    predicted = predictor_pb2_grpc.PredictorStub(channel).Predict(
        predictor_pb2.PredictRequest(
            event_id=f"scale-out-{time.monotonic_ns()}", entity_id=entity, alias="champion"
        ),
        timeout=10,
    )
    return metadata.versions[0], inferred.model_version, predicted.model_version


def ask_fresh_connections(
    target: str, workers: list[int], entity: str
) -> dict[int | None, Counter[Told]]:
    """Open CONNECTIONS connections, held open together, and ask each which
    version it is served; the answers counted by the worker that accepted the
    connection (None: none of them)."""
    port = int(target.rpartition(":")[2])
    channels: list[grpc.Channel] = []
    asked = []
    try:
        for _ in range(CONNECTIONS):
            before = client_ports(port)
            # A subchannel pool of its own: a TCP connection of its own, not the
            # one another channel to the same target would share.
            channel = grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
            channels.append(channel)
            told = ask(channel, entity)
            opened = client_ports(port) - before
            assert len(opened) == 1, f"one new connection per channel, got {opened}"
            asked.append((opened.pop(), told))
        # While every connection is still open, so no client port is reused.
        owners = accepted_by(port, workers)
    finally:
        for channel in channels:
            channel.close()
    served: dict[int | None, Counter[Told]] = {}
    for client, told in asked:
        served.setdefault(owners.get(client), Counter())[told] += 1
    return served


def every_worker_serves(
    target: str, workers: list[int], version: int, entity: str, timeout_s: float = 60
) -> None:
    """Within `timeout_s`, every one of CONNECTIONS fresh connections is told
    `version` three ways, and each worker accepted some of them."""
    wanted = {pid: {(str(version), str(version), version)} for pid in workers}
    seen: dict[str, object] = {}

    def all_told() -> bool:
        served = ask_fresh_connections(target, workers, entity)
        seen["served"] = served
        return {pid: set(told) for pid, told in served.items()} == wanted

    try:
        wait_until(
            all_told, timeout_s, f"every worker to serve v{version}", tolerate=(grpc.RpcError,)
        )
    except AssertionError as error:
        raise AssertionError(f"{error}; workers {workers} served {seen}") from None


# A stack start, two trainings and three checks of every worker: beyond the
# default 120 s on a busy machine.
@pytest.mark.timeout(240)
def test_labelled_events_become_a_champion_every_inference_worker_serves(tmp_path: Path) -> None:
    env = stack_env(tmp_path / "home", DRIFTLOOP_INFERENCE_WORKERS=str(WORKERS))
    bootstrap = env["DRIFTLOOP_KAFKA_BOOTSTRAP"]
    log = (tmp_path / "up.log").open("w")
    up = subprocess.Popen(
        [*DRIFTLOOP, "up", "--only", "ingestion,features,trainer,registry,inference"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(lambda: run(env, "status").returncode == 0, 150, "every service ready")
        events = labelled_events(900)
        asyncio.run(produce(bootstrap, events))
        last = events[-1]

        def applied() -> bool:
            done = run(env, "features", "get", str(last["customer_id"]), "--json")
            if done.returncode != 0:
                return False
            updated = json.loads(done.stdout)["updated_at"]
            return bool(updated) and updated.startswith(
                time.strftime("%Y-%m-%dT%H", time.gmtime(int(last["ts"]) / 1000))  # type: ignore[arg-type]
            )

        wait_until(applied, 60, "the feature store to apply the events")
        # The offline sink is a consumer group of its own: on a busy machine it
        # joins seconds after the online state is there.
        rows: list[int] = []
        try:
            wait_until(
                lambda: (
                    rows.append(training_rows(env["DRIFTLOOP_ENDPOINTS__FEATURES"]))
                    or rows[-1] >= len(events)
                ),
                60,
                "every labelled event in the offline log",
            )
        except AssertionError as error:
            raise AssertionError(f"{error}; rows seen {rows[-5:]}") from None

        trained = run(
            env, "train", "payments", "--reason", "e2e", "--json", "--timeout", "150", timeout=200
        )
        assert trained.returncode == 0, trained.stdout + trained.stderr
        outcome = json.loads(trained.stdout.strip().splitlines()[-1])
        assert outcome["outcome"] == "registered", outcome
        assert outcome["version"] == 1
        assert outcome["status"].endswith("CHAMPION"), outcome
        assert outcome["metrics"]["roc_auc"] > 0.8, outcome["metrics"]

        listed = run(env, "models", "list", "payments", "--json")
        assert listed.returncode == 0, listed.stderr
        [version] = json.loads(listed.stdout)["versions"]
        assert version["version"] == 1 and version["champion"] is True
        assert version["metrics"]["roc_auc"] == pytest.approx(outcome["metrics"]["roc_auc"])

        model_file = tmp_path / "champion.onnx"
        downloaded = run(env, "models", "download", "payments", "champion", "-o", str(model_file))
        assert downloaded.returncode == 0, downloaded.stderr
        session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
        feeds = {}
        for tensor in session.get_inputs():
            if tensor.type == "tensor(string)":
                feeds[tensor.name] = np.array([["atm"], ["web"]], dtype=object)
            else:
                values = {"amount": [480.0, 20.0], "hour": [2.0, 14.0]}.get(tensor.name, [1.0, 1.0])
                feeds[tensor.name] = np.array(values, dtype=np.float32).reshape(2, 1)
        outputs = dict(
            zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True)
        )
        probabilities = outputs["probabilities"]
        assert probabilities.shape == (2, 2)
        assert probabilities[0, 1] > probabilities[1, 1], "a large ATM withdrawal looks riskier"

        # Inference runs as WORKERS processes on one port (SO_REUSEPORT), the
        # one the supervisor started and its copies; each serves v1.
        status = json.loads(run(env, "status", "--json").stdout)
        [started] = [s["pid"] for s in status["services"] if s["name"] == "inference"]
        workers = [started, *copies_of(started, "driftloop_inference")]
        assert len(workers) == WORKERS, workers
        target = env["DRIFTLOOP_ENDPOINTS__INFERENCE"]
        entity = str(last["customer_id"])
        every_worker_serves(target, workers, 1, entity)

        # The same rows train an equal v2: the gate keeps it a candidate.
        retrained = run(
            env, "train", "payments", "--reason", "e2e", "--json", "--timeout", "150", timeout=200
        )
        assert retrained.returncode == 0, retrained.stdout + retrained.stderr
        second = json.loads(retrained.stdout.strip().splitlines()[-1])
        assert second["outcome"] == "registered" and second["version"] == 2, second
        assert second["status"].endswith("CANDIDATE"), second

        # Promoted by hand, then rolled back: every worker follows each change.
        promoted = run(env, "models", "promote", "payments", "2", "--reason", "e2e scale-out")
        assert promoted.returncode == 0, promoted.stdout + promoted.stderr
        every_worker_serves(target, workers, 2, entity)
        rolled_back = run(env, "models", "rollback", "payments", "--reason", "e2e scale-out")
        assert rolled_back.returncode == 0, rolled_back.stdout + rolled_back.stderr
        every_worker_serves(target, workers, 1, entity)
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(90)
        log.close()
    assert up.returncode == 0, (tmp_path / "up.log").read_text()[-3000:]
