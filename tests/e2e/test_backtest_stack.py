"""`driftloop backtest --mode stack`: a user's labelled stream through a running stack.

A fresh `driftloop up` with the user's feature set, then the backtest plays the
stream as the user's application and producers would (Predict on each event,
the observation on `events.raw`, its label 2 s later) and reads the loop's own
events back. The report must score every event for Driftloop and for river's
learners on the same events, and show the loop at work: answers from the
first events on (the online learners), a version bootstrapped from the
stream's labels, and accuracy well above a majority guess.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.stack import stack_env

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

DRIFTLOOP = [sys.executable, "-m", "driftloop_cli"]
EVENTS = 2000
CHANGE_AT = 1000
START_MS = 1_763_800_000_000

FEATURESET = """\
name: loans
entity: customer_id
timestamp: ts
label: approved
fields:
  salary: {type: float, min: 0}
  age: {type: int, min: 0, max: 120}
  loan: {type: float, min: 0}
  elevel: {type: category, values: ["0", "1", "2", "3", "4"]}
model:
  task: binary_classification
  features: [salary, age, loan, elevel]
"""


def write_stream(path: Path) -> float:
    """river's Agrawal loans, function 0 then 2; the majority-class share."""
    from river.datasets import synth

    before = synth.Agrawal(classification_function=0, seed=3)
    after = synth.Agrawal(classification_function=2, seed=4)
    rows = [*before.take(CHANGE_AT), *after.take(EVENTS - CHANGE_AT)]
    lines = [
        json.dumps(
            {
                "event_id": f"loan-{i:06d}",
                "customer_id": f"c{i % 40:02d}",
                "ts": START_MS + i * 10,
                "salary": round(float(x["salary"]), 2),
                "age": int(x["age"]),
                "loan": round(float(x["loan"]), 2),
                "elevel": str(x["elevel"]),
                "approved": int(y),
            }
        )
        for i, (x, y) in enumerate(rows)
    ]
    path.write_text("\n".join(lines) + "\n")
    positives = sum(int(y) for _, y in rows) / len(rows)
    return max(positives, 1 - positives)


def wait_ready(env: dict[str, str], up: subprocess.Popen[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and up.poll() is None:
        done = subprocess.run(
            [*DRIFTLOOP, "status", "--json"], env=env, capture_output=True, text=True, timeout=30
        )
        if done.returncode == 0:
            return
        time.sleep(1)
    raise AssertionError(f"the stack did not get ready in {timeout_s} s")


def test_a_users_stream_through_the_stack_is_scored_against_river(tmp_path: Path) -> None:
    featureset = tmp_path / "loans.yaml"
    featureset.write_text(FEATURESET)
    stream = tmp_path / "loans.jsonl"
    majority = write_stream(stream)
    env = stack_env(
        tmp_path / "home",
        DRIFTLOOP_DRIFT_COOLDOWN_S="10",
        DRIFTLOOP_DRIFT_BOOTSTRAP_MIN_LABELS="300",
        OMP_NUM_THREADS="1",
    )
    log = (tmp_path / "up.log").open("w")
    up = subprocess.Popen(
        [*DRIFTLOOP, "up", "--featureset", str(featureset)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out = tmp_path / "report"
    try:
        wait_ready(env, up, 120)
        done = subprocess.run(
            [
                *DRIFTLOOP,
                "backtest",
                str(stream),
                "-f",
                str(featureset),
                "--mode",
                "stack",
                "--rate",
                "100",
                "--change-at",
                str(CHANGE_AT),
                "--out",
                str(out),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(timeout=60)
        log.close()
    context = done.stdout[-3000:] + done.stderr[-3000:]
    assert done.returncode == 0, context
    report = json.loads((out / "report.json").read_text())
    assert report["scenario"]["mode"] == "stack"

    predictions = report["predictions"]
    assert predictions["events_sent"] == EVENTS and predictions["labels_sent"] == EVENTS
    assert not predictions["errors"], predictions
    # The online learners answer before any version exists: almost every event is answered.
    assert predictions["answered"] >= 0.95 * EVENTS, predictions

    bootstrap = report["versions"][0]
    assert bootstrap["version"] == 1 and bootstrap["trigger"] == "bootstrap", report["versions"]

    reference = report["reference"]
    overall = reference["overall"]
    assert {"driftloop", "arf", "hat", "lr"} <= set(overall), overall
    assert overall["driftloop"] >= majority + 0.1, (overall, majority)
    assert reference["after_change"]["driftloop"] is not None, reference
    summary = (out / "summary.md").read_text()
    assert "through the stack" in summary and "river ARF" in summary
