"""The closed loop through real processes: `driftloop demo` on a short scenario.

With a drift: the loop bootstraps v1 by itself, detects the change after it
happens, retrains, promotes v2 (at most one more retrain follows it), later
predictions carry the newest retrained version and their accuracy is clearly
above the accuracy during the drift. On a stationary stream of the same
length: v1 only, and no retraining triggered by drift.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support.stack import stack_env

# A demo run starts the whole stack and streams for about a minute.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

DRIFTLOOP = [sys.executable, "-m", "driftloop_cli"]
# Short enough for CI, long enough for bootstrap, drift, retrain and recovery.
# The drift run stops once recovered (about event 2,500); the stationary one
# streams all 3,200 events (64 s).
SHORT = ("--events", "3200", "--drift-at", "0.5", "--rate", "50", "--timeout", "120")


def run_demo(
    tmp_path: Path, scenario: str, **env: str
) -> tuple[subprocess.CompletedProcess[str], Any]:
    """`driftloop demo` on the short scenario; `env`: service settings to add."""
    out = tmp_path / "report"
    done = subprocess.run(
        [*DRIFTLOOP, "demo", "--scenario", scenario, "--out", str(out), *SHORT],
        env=stack_env(tmp_path / "home", **env),
        capture_output=True,
        text=True,
        timeout=300,
    )
    report_file = out / "report.json"
    assert report_file.exists(), done.stdout[-3000:] + done.stderr[-3000:]
    return done, json.loads(report_file.read_text())


def test_drift_is_detected_retrained_and_recovered(tmp_path: Path) -> None:
    done, report = run_demo(tmp_path, "drift")
    context = done.stdout[-4000:] + done.stderr[-2000:]
    assert done.returncode == 0, context
    assert report["outcome"] == "recovered", context

    versions = {v["version"]: v for v in report["versions"]}
    assert versions[1]["trigger"] == "bootstrap", versions
    assert versions[1]["promoted_at"] is not None

    drift = report["drift"]
    onset = report["scenario"]["onset_event"]
    assert drift["onset_event"] == onset
    assert drift["detected_event"] is not None and drift["detected_event"] >= onset, drift
    assert drift["kind"] in ("performance", "data")

    # The first retrain waits for post-drift rows and trains on them. It is usually
    # the version that recovers; on a loaded machine the detector's change point
    # can fall early enough for it to keep pre-change rows, the error stream stays
    # high and one more retrain follows. The run is judged on the newest one, and
    # a loop that keeps retraining (more than two) fails.
    retrained = report["retrained_versions"]
    new = report["post_drift_version"]
    assert retrained[:1] == [2] and len(retrained) <= 2, report["versions"]
    assert new == retrained[-1]
    assert all(versions[v]["trigger"] == "drift" for v in retrained), report["versions"]
    assert versions[new]["promoted_at"] is not None
    assert versions[new]["serving_from_event"] > drift["detected_event"]
    assert report["predictions"]["by_version"][str(new)] >= 300
    series = report["accuracy"]["series"]
    assert series[-1]["version"] >= new, "the last predictions come from the retrained version"

    # On a quiet machine the demo reaches 0.95-0.97 after recovery against 0.74-0.78
    # during the drift; a machine busy with other tests slows the feature store,
    # whose lagging aggregates cost every version some accuracy, hence the margins.
    accuracy = report["accuracy"]
    assert accuracy["after"] >= accuracy["during"] + 0.08, accuracy
    assert accuracy["after"] >= 0.9, accuracy
    assert report["recovery_seconds"] > 0
    assert report["retrain_trace_id"] and len(report["retrain_trace_id"]) == 32

    # The retrain loop reads as one trace, from the detection to the first
    # prediction the new version served, with the command the demo printed, as
    # printed (the demo keeps its state apart from `driftloop up`'s).
    printed = re.search(r"`(driftloop traces [^`]+)`", done.stdout)
    assert printed is not None, done.stdout
    command = shlex.split(printed.group(1))
    assert command[-1] == report["retrain_trace_id"], command
    traced = subprocess.run(
        [*DRIFTLOOP, *command[1:], "--json"],
        env=stack_env(tmp_path / "unused"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert traced.returncode == 0, traced.stderr
    loop = json.loads(traced.stdout)
    hops = {(span["service"], span["name"]) for span in loop["spans"]}
    for hop in [
        ("drift", "send drift.detected"),
        ("drift", "send training.requested"),
        ("trainer", "trainer.fit"),
        ("registry", "send models.promoted"),
        ("inference", "inference.model_swap"),
        ("inference", "inference.first_prediction"),
    ]:
        assert hop in hops, (hop, sorted(hops))
    assert len({service for service, _ in hops}) >= 5, sorted(hops)

    out = tmp_path / "report"
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (out / "summary.md").read_text()
    assert f"event {onset}" in summary and "after recovery" in summary


def test_stationary_stream_triggers_no_retraining(tmp_path: Path) -> None:
    done, report = run_demo(tmp_path, "stationary")
    context = done.stdout[-4000:] + done.stderr[-2000:]
    assert done.returncode == 0, context
    assert report["outcome"] == "completed", context
    assert [v["version"] for v in report["versions"]] == [1], report["versions"]
    assert report["versions"][0]["trigger"] == "bootstrap"
    assert report["drift_retrains"] == 0, report["detections"]
    assert report["predictions"]["events_sent"] == 3200
    assert report["accuracy"]["before"] >= 0.8, report["accuracy"]
