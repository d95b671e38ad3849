"""Promotion as a rollout, through the whole stack: `driftloop demo` with
`DRIFTLOOP_REGISTRY_ROLLOUT=shadow`.

The drift retrain's version passes the offline gate and goes into shadow
instead of serving: inference scores every Predict with it too and publishes
its answers marked shadow, drift pairs them with the champion's on the
labels, and only the live verdict promotes it. Checked where a user sees it:
the rollout's steps on `models.rollouts` in the demo's report, the live
figures (the candidate made fewer errors on the same labelled events), the
promotion made by the rollout, and the recovery it brings.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from support.stack import DRIFTLOOP, stack_env
from test_loop import run_demo

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def test_a_drift_retrain_is_promoted_by_its_live_verdict(tmp_path: Path) -> None:
    done, report = run_demo(
        tmp_path,
        "drift",
        DRIFTLOOP_REGISTRY_ROLLOUT="shadow",
        DRIFTLOOP_REGISTRY_ROLLOUT_MIN_PAIRED="100",
    )
    context = done.stdout[-4000:] + done.stderr[-2000:]
    assert done.returncode == 0, context
    assert report["outcome"] == "recovered", context

    new = report["post_drift_version"]
    steps = {(r["candidate_version"], r["step"]): r for r in report["rollouts"]}
    started, judged, ended = (steps.get((new, step)) for step in ("started", "judged", "ended"))
    assert started is not None, report["rollouts"]
    assert started["champion_version"] < new
    assert judged is not None and judged["outcome"] == "promote", report["rollouts"]
    # The verdict rests on at least the configured number of labelled events
    # both versions scored (shadow answers reached drift), on which the
    # candidate made fewer errors.
    assert judged["paired"] >= 100
    assert judged["candidate_errors"] < judged["champion_errors"], judged
    assert ended is not None and ended["outcome"] == "promoted", report["rollouts"]

    # The version served only once the rollout promoted it.
    promotion = next(p for p in report["promotions"] if p["to_version"] == new)
    assert promotion["reason"] == judged["reason"]
    assert promotion["at_event"] >= started["at_event"]
    versions = {v["version"]: v for v in report["versions"]}
    assert versions[new]["serving_from_event"] >= started["at_event"]
    assert report["accuracy"]["after"] >= 0.9, report["accuracy"]

    # Once promoted, the previous champion watches the new one in shadow.
    watches = [r for r in report["rollouts"] if r["kind"] == "watch" and r["step"] == "started"]
    assert [(w["candidate_version"], w["champion_version"]) for w in watches] == [
        (started["champion_version"], new)
    ], report["rollouts"]

    # The retrain loop's trace goes on through the rollout: the verdict, the
    # promotion it made and the swap are in it.
    printed = re.search(r"`(driftloop traces [^`]+)`", done.stdout)
    assert printed is not None, done.stdout
    traced = subprocess.run(
        [*DRIFTLOOP, *shlex.split(printed.group(1))[1:], "--json"],
        env=stack_env(tmp_path / "unused"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert traced.returncode == 0, traced.stderr
    hops = {(span["service"], span["name"]) for span in json.loads(traced.stdout)["spans"]}
    for hop in [
        ("trainer", "trainer.fit"),
        ("registry", "send models.rollouts"),
        ("drift", "drift.rollout_judged"),
        ("registry", "send models.promoted"),
        ("inference", "inference.model_swap"),
    ]:
        assert hop in hops, (hop, sorted(hops))

    summary = (tmp_path / "report" / "summary.md").read_text()
    assert f"v{new} went into shadow" in summary and "ended promoted" in summary
