"""`demo-report/`: the story of one demo run, as JSON, a plot and a few lines of prose.

Built from the `Timeline` alone (pure), so the figures can be checked on a
timeline written by hand. Accuracy counts answered predictions only: events
scored before the first version existed are "no model yet", not errors.

Phases of a drift run: *before* is every answer for events before the onset;
*during* the answers after it from versions older than the post-drift one;
*after* the answers from the newest version promoted after the onset (see
`timeline.post_drift_version`).
"""

from __future__ import annotations

import bisect
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from driftloop_cli.demo.timeline import (
    DriftSeen,
    Served,
    Timeline,
    TrainingSeen,
    accuracy,
    post_drift_version,
    retrained_versions,
)
from driftloop_cli.outputs import open_output, write_output

ROLLING_WINDOW = 200
MAX_SERIES_POINTS = 600


def iso(epoch_s: float | None) -> str | None:
    if epoch_s is None:
        return None
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="milliseconds")


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def rolling_series(served: Sequence[Served], window: int) -> list[dict[str, Any]]:
    """Accuracy of the newest `window` answers after each answer, by event index
    (thinned to at most MAX_SERIES_POINTS points)."""
    answered = sorted((s for s in served if s.status == "ok"), key=lambda s: s.index)
    points: list[dict[str, Any]] = []
    correct = 0
    for k, item in enumerate(answered):
        correct += item.correct
        if k >= window:
            correct -= answered[k - window].correct
        size = min(k + 1, window)
        if size < min(window, 20):
            continue
        points.append(
            {"event": item.index, "accuracy": round(correct / size, 4), "version": item.version}
        )
    if len(points) > MAX_SERIES_POINTS:
        step = len(points) / MAX_SERIES_POINTS
        kept = [points[int(i * step)] for i in range(MAX_SERIES_POINTS)]
        points = kept if kept[-1] is points[-1] else [*kept, points[-1]]
    return points


def _event_at(timeline: Timeline, when: float) -> int | None:
    """The index of the last event sent at or before `when`."""
    order = sorted(timeline.sent.items(), key=lambda item: item[1])
    times = [at for _, at in order]
    position = bisect.bisect_right(times, when)
    return order[position - 1][0] if position else None


def _detection(
    timeline: Timeline, onset: int | None, index_of: Mapping[str, int]
) -> tuple[DriftSeen | None, list[DriftSeen]]:
    """The first detection at or after the onset, and the false alarms before it."""

    def position(drift: DriftSeen) -> int | None:
        found = index_of.get(drift.last_event_id)
        return found if found is not None else _event_at(timeline, drift.detected_at)

    ordered = sorted(timeline.drifts, key=lambda d: d.detected_at)
    if onset is None:
        return None, ordered
    true = [d for d in ordered if (position(d) or -1) >= onset]
    false = [d for d in ordered if (position(d) or -1) < onset]
    return (true[0] if true else None), false


def _versions(timeline: Timeline) -> list[dict[str, Any]]:
    out = []
    for seen in sorted(timeline.versions, key=lambda v: v.version):
        promoted = [
            p.promoted_at
            for p in timeline.promotions
            if p.to_version == seen.version and p.kind == "promote"
        ]
        answers = [s for s in timeline.served if s.status == "ok" and s.version == seen.version]
        out.append(
            {
                "version": seen.version,
                "status": seen.status,
                "trigger": timeline.trigger_of(seen.version),
                "metrics": {k: round(v, 4) for k, v in sorted(seen.metrics.items())},
                "registered_at": iso(seen.registered_at),
                "promoted_at": iso(min(promoted)) if promoted else None,
                "serving_from_event": min((s.index for s in answers), default=None),
                "predictions": len(answers),
                "accuracy": _round(accuracy(answers)),
                "reason": seen.reason,
            }
        )
    return out


def _drift_record(drift: DriftSeen) -> dict[str, Any]:
    return {
        "drift_id": drift.drift_id,
        "kind": drift.kind,
        "detector": drift.detector,
        "feature": drift.feature or None,
        "statistic": round(drift.statistic, 4),
        "threshold": round(drift.threshold, 4),
        "model_version": drift.model_version,
        "last_event_id": drift.last_event_id,
        "detected_at": iso(drift.detected_at),
    }


def _retrain_trace(
    timeline: Timeline, version: int | None, detection: DriftSeen | None
) -> str | None:
    """The trace of the drift that caused the post-drift version (else of the detection)."""
    by_id = {d.drift_id: d for d in timeline.drifts}
    requests: dict[str, TrainingSeen] = {t.request_id: t for t in timeline.trainings}
    for seen in timeline.versions:
        request = requests.get(seen.request_id)
        if seen.version == version and request is not None:
            cause = by_id.get(request.parent_drift_id)
            if cause is not None and cause.trace_id:
                return cause.trace_id
            if request.trace_id:
                return request.trace_id
    return detection.trace_id if detection is not None else None


def build_report(
    timeline: Timeline,
    scenario: Mapping[str, Any],
    onset: int | None,
    index_of: Mapping[str, int],
    *,
    window: int = ROLLING_WINDOW,
) -> dict[str, Any]:
    """Every figure of the run, JSON-ready."""
    served = sorted(timeline.served, key=lambda s: s.index)
    answered = [s for s in served if s.status == "ok"]
    statuses = Counter(s.status for s in served)
    new_version = post_drift_version(timeline, onset)
    detection, false_alarms = _detection(timeline, onset, index_of)
    onset_at = timeline.sent.get(onset) if onset is not None else None

    if onset is None:
        before, during, after = answered, [], []
    else:
        before = [s for s in answered if s.index < onset]
        late = [s for s in answered if s.index >= onset]
        during = [s for s in late if new_version is None or (s.version or 0) < new_version]
        after = [s for s in late if new_version is not None and (s.version or 0) >= new_version]

    def serving_after(version: int | None) -> float | None:
        """Seconds from the onset to the first answer from `version`."""
        first = next((s for s in served if version and s.version == version), None)
        return first.at - onset_at if first is not None and onset_at is not None else None

    retrained = retrained_versions(timeline, onset)
    recovery_s = serving_after(new_version)
    drift: dict[str, Any] = {"onset_event": onset, "onset_at": iso(onset_at)}
    if detection is not None:
        detected_event = index_of.get(detection.last_event_id)
        drift.update(_drift_record(detection))
        drift["detected_event"] = detected_event
        drift["delay_events"] = (
            detected_event - onset if detected_event is not None and onset is not None else None
        )
        drift["delay_seconds"] = (
            _round(detection.detected_at - onset_at, 2) if onset_at is not None else None
        )
    else:
        drift.update({"detected_event": None, "detected_at": None, "kind": None})

    drift_retrains = [t for t in timeline.trainings if t.trigger == "drift"]
    kinds = {r.rollout_id: r.kind for r in timeline.rollouts if r.step == "started"}
    return {
        "outcome": timeline.outcome,
        "scenario": dict(scenario),
        "started_at": iso(timeline.started_at),
        "finished_at": iso(timeline.finished_at),
        "duration_seconds": _round(timeline.finished_at - timeline.started_at, 1),
        "versions": _versions(timeline),
        "promotions": [
            {
                "to_version": p.to_version,
                "from_version": p.from_version,
                "kind": p.kind,
                "reason": p.reason,
                "promoted_at": iso(p.promoted_at),
                "at_event": _event_at(timeline, p.promoted_at),
            }
            for p in sorted(timeline.promotions, key=lambda p: p.promoted_at)
        ],
        "rollouts": [
            {
                "rollout_id": r.rollout_id,
                # A verdict does not say; its rollout's start does.
                "kind": kinds.get(r.rollout_id, r.kind),
                "step": r.step,
                "candidate_version": r.candidate_version,
                "champion_version": r.champion_version,
                "outcome": r.outcome,
                "reason": r.reason,
                "at": iso(r.at),
                "at_event": _event_at(timeline, r.at),
                "paired": r.paired,
                "champion_errors": r.champion_errors,
                "candidate_errors": r.candidate_errors,
            }
            for r in sorted(timeline.rollouts, key=lambda r: r.at)
        ],
        "drift": drift,
        "detections": [_drift_record(d) for d in timeline.drifts],
        "false_alarms": len(false_alarms),
        "trainings": [
            {"request_id": t.request_id, "trigger": t.trigger, "reason": t.reason}
            for t in timeline.trainings
        ],
        "drift_retrains": len(drift_retrains),
        "training_failures": [
            {"request_id": f.request_id, "stage": f.stage, "reason": f.reason}
            for f in timeline.failures
        ],
        "post_drift_version": new_version,
        "retrained_versions": retrained,
        "first_retrain_serving_seconds": _round(
            serving_after(retrained[0]) if retrained else None, 2
        ),
        "accuracy": {
            "window": window,
            "before": _round(accuracy(before)),
            "during": _round(accuracy(during)),
            "after": _round(accuracy(after)),
            "overall": _round(accuracy(answered)),
            "series": rolling_series(served, window),
        },
        "recovery_seconds": _round(recovery_s, 2),
        "retrain_trace_id": _retrain_trace(timeline, new_version, detection),
        "predictions": {
            "events_sent": len(timeline.sent),
            "labels_sent": timeline.labels_sent,
            "answered": len(answered),
            # Answers whose online aggregates differed from the point-in-time truth.
            "skewed": sum(s.skewed for s in answered),
            "no_model_yet": statuses.get("no_model", 0),
            "errors": {k: v for k, v in sorted(statuses.items()) if k not in ("ok", "no_model")},
            # Answers by the champion version in effect, and by who gave them.
            "by_version": {
                str(v): n
                for v, n in sorted(
                    Counter(s.version for s in answered).items(), key=lambda item: item[0] or 0
                )
            },
            "by_answerer": dict(
                sorted(Counter(s.learner or f"v{s.version}" for s in answered).items())
            ),
        },
    }


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def summary_markdown(report: Mapping[str, Any]) -> str:
    """The run in a few lines, with the figures."""
    scenario = report["scenario"]
    acc = report["accuracy"]
    drift = report["drift"]
    lines = [
        f"# Driftloop demo: {scenario.get('kind')} scenario (seed {scenario.get('seed')})",
        "",
        f"Outcome: **{report['outcome']}** after {report['duration_seconds']} s; "
        f"{report['predictions']['events_sent']} events sent, "
        f"{report['predictions']['answered']} predictions answered "
        f"({report['predictions']['no_model_yet']} before any model existed).",
        "",
    ]
    versions = report["versions"]
    if versions:
        first = versions[0]
        lines.append(
            f"- v{first['version']} was trained by the loop itself ({first['trigger'] or 'unknown'}"
            f" trigger) and served from event {first['serving_from_event']}."
        )
    if drift.get("onset_event") is not None:
        lines.append(f"- The fraud pattern changed at event {drift['onset_event']}.")
        if drift.get("detected_event") is not None or drift.get("detected_at"):
            lines.append(
                f"- Drift detected ({drift['kind']}, {drift.get('detector')}) at event "
                f"{drift.get('detected_event')}: {drift.get('delay_events')} events and "
                f"{drift.get('delay_seconds')} s after the onset."
            )
        else:
            lines.append("- No drift was detected.")
        retrained = report["retrained_versions"]
        if len(retrained) > 1:
            lines.append(
                f"- Retrained after the drift: {', '.join(f'v{v}' for v in retrained)}; the "
                f"first served {report['first_retrain_serving_seconds']} s after the onset."
            )
        if report["post_drift_version"] is not None:
            lines.append(
                f"- v{report['post_drift_version']} was retrained and served "
                f"{report['recovery_seconds']} s after the onset."
            )
        else:
            lines.append("- No post-drift version was served before the run ended.")
        lines.append(
            f"- Accuracy: {percent(acc['before'])} before the drift, "
            f"{percent(acc['during'])} during it, {percent(acc['after'])} after recovery."
        )
    else:
        lines.append(
            f"- Stationary stream: accuracy {percent(acc['before'])}, "
            f"{report['false_alarms']} drift detections, "
            f"{report['drift_retrains']} drift-triggered retraining runs."
        )
    for step in report.get("rollouts", []):
        if step["step"] == "started" and step["kind"] == "watch":
            lines.append(
                f"- The previous champion v{step['candidate_version']} watched "
                f"v{step['champion_version']} in shadow from event {step['at_event']}."
            )
        elif step["step"] == "ended" and step["kind"] == "watch":
            lines.append(f"- The watch ended {step['outcome']}: {step['reason']}")
        elif step["step"] == "started":
            lines.append(
                f"- v{step['candidate_version']} went into shadow beside champion "
                f"v{step['champion_version']} at event {step['at_event']}."
            )
        elif step["step"] == "ended":
            lines.append(
                f"- Its rollout ended {step['outcome']} at event {step['at_event']}: "
                f"{step['reason']}"
            )
    if report["false_alarms"] and drift.get("onset_event") is not None:
        lines.append(f"- False alarms before the onset: {report['false_alarms']}.")
    trace_id = report["retrain_trace_id"]
    if trace_id:
        command = report.get("retrain_trace_command") or f"driftloop traces {trace_id}"
        lines.append(f"- Trace of the retrain loop: `{trace_id}` (`{command}`).")
    lines += ["", "![rolling accuracy](accuracy.png)", ""]
    return "\n".join(lines)


def plot_accuracy(report: Mapping[str, Any], sink: BinaryIO, title: str | None = None) -> None:
    """Rolling accuracy over events, with the onset, the detection and each promotion,
    as PNG bytes written to `sink`; reference lines (`report["reference"]["series"]`,
    as a backtest writes them) beside it when present."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = report["accuracy"]["series"]
    figure, axes = plt.subplots(figsize=(10, 4.5), dpi=110)
    try:
        if series:
            axes.plot(
                [p["event"] for p in series],
                [p["accuracy"] for p in series],
                color="tab:blue",
                linewidth=1.6,
                label=f"rolling accuracy ({report['accuracy']['window']} predictions)",
            )
        references = report.get("reference", {}).get("series", {})
        colours = iter(("tab:purple", "tab:brown", "tab:gray"))
        for name, points in references.items():
            if name != "driftloop" and points:
                axes.plot(
                    [p[0] for p in points],
                    [p[1] for p in points],
                    color=next(colours, None),
                    linewidth=1.0,
                    alpha=0.8,
                    label=f"river {name.upper()} (rolling)",
                )
        drift = report["drift"]
        if drift.get("onset_event") is not None:
            axes.axvline(drift["onset_event"], color="tab:red", linestyle="--", label="drift onset")
        if drift.get("detected_event") is not None:
            axes.axvline(
                drift["detected_event"], color="tab:orange", linestyle=":", label="drift detected"
            )
        for version in report["versions"]:
            start = version.get("serving_from_event")
            if start is None:
                continue
            axes.axvline(start, color="tab:green", alpha=0.7)
            axes.annotate(
                f"v{version['version']}",
                (start, 0.95),
                xycoords=("data", "axes fraction"),
                xytext=(3, 0),
                textcoords="offset points",
                color="tab:green",
            )
        shadowed = False
        for step in report.get("rollouts", []):
            if step["step"] != "started" or step["kind"] != "trial" or step.get("at_event") is None:
                continue
            shadowed = True
            axes.axvline(step["at_event"], color="tab:cyan", linestyle="-.", alpha=0.8)
            axes.annotate(
                f"v{step['candidate_version']} shadow",
                (step["at_event"], 0.08),
                xycoords=("data", "axes fraction"),
                xytext=(3, 0),
                textcoords="offset points",
                color="tab:cyan",
                fontsize=8,
            )
        if shadowed:
            axes.plot([], [], color="tab:cyan", linestyle="-.", label="rollout starts (shadow)")
        axes.set_ylim(0.0, 1.02)
        axes.set_xlabel("event")
        axes.set_ylabel("accuracy")
        scenario = report["scenario"]
        axes.set_title(
            title or f"Driftloop demo: {scenario.get('kind')} scenario, seed {scenario.get('seed')}"
        )
        axes.grid(alpha=0.3)
        axes.plot([], [], color="tab:green", label="version starts serving")
        axes.legend(loc="lower right", fontsize=8)
        figure.tight_layout()
        figure.savefig(sink, format="png")
    finally:
        plt.close(figure)


def write_report(report: Mapping[str, Any], out: Path) -> list[Path]:
    """report.json, accuracy.png and summary.md under `out`, each written by the
    rule of `driftloop_cli.outputs` (a previous report is replaced file by file,
    whole; a FIFO or device in their place is written in place)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "report.json", out / "accuracy.png", out / "summary.md"]
    write_output(paths[0], (json.dumps(report, indent=2) + "\n").encode())
    with open_output(paths[1]) as sink:
        plot_accuracy(report, sink)
    write_output(paths[2], summary_markdown(report).encode())
    return paths
