"""`backtest-report/`: the demo's report of a backtest, with river's lines beside it.

The loop's figures come from the demo's `build_report` on the backtest's
timeline (accuracy by version and over time, detections, retrains, false
alarms); the backtest adds its options, the stream's counts and the
comparison with river (`reference.compare`).

A user's stream has no known change point unless they name one
(`--change-at`): without it every detection is listed, and none is called a
false alarm.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from driftloop_cli.backtest.engine import Backtest
from driftloop_cli.backtest.stream import BacktestEvent, Stream
from driftloop_cli.demo.report import build_report, percent, plot_accuracy
from driftloop_cli.demo.timeline import Timeline
from driftloop_cli.outputs import open_output, write_output


def in_process_details(backtest: Backtest) -> dict[str, Any]:
    """What only the in-process replay knows: its options, the drift settings,
    the rows each version was trained on, and the detections that asked for no
    training."""
    options = backtest.options
    return {
        "options": {
            "clock": "simulated",
            "train_s": options.train_s,
            "min_rows": options.min_rows,
            "gate_margin": options.gate.min_improvement,
        },
        "versions": [
            {"training_rows": v.rows, "training_window": v.window} for v in backtest.versions
        ],
        "suppressed_detections": list(backtest.suppressed),
        "drift_settings": backtest.drift.model_dump(mode="json"),
    }


def backtest_report(
    timeline: Timeline,
    stream: Stream,
    reference: Mapping[str, Any],
    *,
    featureset: str,
    source: str,
    mode: str,
    rate: float,
    label_delay_s: float,
    change_at: int | None,
    details: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The demo's report of `timeline`, with the stream's counts, the river
    comparison and (in process) `in_process_details`."""
    events: Sequence[BacktestEvent] = stream.events
    details = details or {}
    scenario = (
        {
            "kind": "backtest",
            "mode": mode,
            "source": source,
            "featureset": featureset,
            "change_at_event": change_at,
            "rate": rate,
            "label_delay_s": label_delay_s,
        }
        | dict(details.get("options", {}))
        | stream.summary()
    )
    index_of = {e.event_id: e.index for e in events}
    report = build_report(timeline, scenario, change_at, index_of)
    if change_at is None:
        report["false_alarms"] = None
    for version, extra in zip(report["versions"], details.get("versions", []), strict=False):
        version.update(extra)
    report["suppressed_detections"] = list(details.get("suppressed_detections", []))
    report["drift_settings"] = details.get("drift_settings")
    report["reference"] = dict(reference)
    return report


def summary_markdown(report: Mapping[str, Any]) -> str:
    """The backtest in a few lines, with the figures."""
    scenario = report["scenario"]
    reference = report["reference"]
    overall = reference["overall"]
    where = "through the stack" if scenario["mode"] == "stack" else "in process, simulated clock"
    lines = [
        f"# Driftloop backtest of {scenario['source']} ({scenario['featureset']})",
        "",
        f"{scenario['events']} labelled events replayed at {scenario['rate']:g}/s "
        f"({where}), labels {scenario['label_delay_s']:g} s later; "
        f"{report['predictions']['answered']} answered by a model, "
        f"{report['predictions']['no_model_yet']} before the first version.",
        "",
        "| version | trigger | status | serving from event | predictions | accuracy |",
        "|---|---|---|---|---|---|",
    ]
    for v in report["versions"]:
        lines.append(
            f"| v{v['version']} | {v['trigger']} | {v['status']} | "
            f"{v['serving_from_event'] if v['serving_from_event'] is not None else '-'} | "
            f"{v['predictions']} | {percent(v['accuracy'])} |"
        )
    lines += [
        "",
        f"- Detections: {len(report['detections'])}; training runs: "
        f"{len(report['trainings'])} ({report['drift_retrains']} after a drift); "
        f"failed or refused: {len(report['training_failures'])}.",
    ]
    for quiet in report["suppressed_detections"]:
        lines.append(
            f"- Detection at event {quiet['event']} asked for no training: {quiet['why']}."
        )
    drift = report["drift"]
    if scenario.get("change_at_event") is not None:
        detected = drift.get("detected_event")
        lines.append(
            f"- Change at event {scenario['change_at_event']}: "
            + (
                f"detected at event {detected} ({drift.get('delay_events')} events later)"
                if detected is not None
                else "not detected"
            )
            + f"; false alarms before it: {report['false_alarms']}."
        )
    lines += [
        f"- Accuracy on every event: Driftloop {percent(overall['driftloop'])}, "
        f"river ARF {percent(overall['arf'])}, river HAT {percent(overall['hat'])} "
        f"({reference['unanswered']}).",
        "",
        "| events | Driftloop | ARF | HAT |",
        "|---|---|---|---|",
    ]
    for window in reference["windows"]:
        lines.append(
            f"| {window['from_event']}-{window['to_event']} | {percent(window['driftloop'])} | "
            f"{percent(window['arf'])} | {percent(window['hat'])} |"
        )
    lines += ["", "![rolling accuracy](accuracy.png)", ""]
    return "\n".join(lines)


def write_report(report: Mapping[str, Any], out: Path) -> list[Path]:
    """report.json, accuracy.png and summary.md under `out`, by the rule of
    `driftloop_cli.outputs`."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "report.json", out / "accuracy.png", out / "summary.md"]
    write_output(paths[0], (json.dumps(report, indent=2) + "\n").encode())
    with open_output(paths[1]) as sink:
        plot_accuracy(report, sink, title=f"Driftloop backtest: {report['scenario']['source']}")
    write_output(paths[2], summary_markdown(report).encode())
    return paths
