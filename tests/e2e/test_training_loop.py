"""Labelled events in, a registered champion out: the training path through real
processes (`driftloop up`: ingestion, feature store, trainer, registry)."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from driftloop.v1 import features_pb2, features_pb2_grpc
from driftloop_testing import produce_json, wait_until
from support.stack import stack_env

pytestmark = pytest.mark.e2e

DRIFTLOOP = [sys.executable, "-m", "driftloop_cli"]


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


def test_labelled_events_become_a_registered_champion(tmp_path: Path) -> None:
    env = stack_env(tmp_path / "home")
    bootstrap = env["DRIFTLOOP_KAFKA_BOOTSTRAP"]
    log = (tmp_path / "up.log").open("w")
    up = subprocess.Popen(
        [*DRIFTLOOP, "up", "--only", "ingestion,features,trainer,registry"],
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
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(90)
        log.close()
    assert up.returncode == 0, (tmp_path / "up.log").read_text()[-3000:]
