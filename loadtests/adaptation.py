"""How fast the loop adapts to a changed concept, against river's online learners.

Writes river's synthetic streams (`loadtests/streams.py`), replays each one,
for each seed, with `driftloop backtest`'s engine in process (simulated clock,
events at `--rate` per second, labels `--label-delay` seconds later), and
tabulates Driftloop's prequential accuracy beside river's ARF, HAT and a
logistic regression on the same events: over the whole stream and over the
1000 events from the change. The drift service's knobs come from the
`DRIFTLOOP_DRIFT_*` environment variables, as in the service; only
`--cooldown-s` overrides one.

    .venv/bin/python loadtests/adaptation.py --events 6000 --seeds 1,2 --streams all \\
        --out adaptation.md [--json rows.json] [--jobs 2] [--cooldown-s 10]

With `--mode stack`, each stream goes through a fresh real stack instead: the
runner starts `driftloop up --featureset` (its own home and ports), plays the
stream with `driftloop backtest --mode stack` at `--rate`, stops the stack,
and tabulates the same figures (one stream at a time; wall-clock time).

"False alarms" are the detections before the change; on a stream with no
change, every detection.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Run as a script: the repository's root, so that `loadtests.streams` imports.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loadtests.streams import (
    DEFAULT_ENTITIES,
    STREAMS,
    SyntheticStream,
    parse_names,
    parse_seeds,
    write_streams,
)

if TYPE_CHECKING:
    from driftloop_drift.config import DriftSettings

# river's lines in the report's reference, in the order of the table's columns.
RIVER = ("arf", "hat", "lr")
AFTER_CHANGE = 1000


@dataclass(frozen=True)
class Job:
    """One backtest: a written stream and the loop's options."""

    stream: SyntheticStream
    rate: float
    label_delay_s: float
    train_s: float
    cooldown_s: float | None
    mode: str = "in-process"


def drift_settings(cooldown_s: float | None) -> DriftSettings:
    """The drift service's settings from the environment, with `cooldown_s` if given."""
    from driftloop_drift.config import DriftSettings

    return DriftSettings() if cooldown_s is None else DriftSettings(cooldown_s=cooldown_s)


def _best(figures: Mapping[str, float | None]) -> tuple[str | None, float | None]:
    """river's best line among `figures` (by name), and its accuracy."""
    scored = [
        (value, name)
        for name, value in figures.items()
        if not name.startswith("driftloop") and value is not None
    ]
    if not scored:
        return None, None
    value, name = max(scored)
    return name, value


def row_of(stream: SyntheticStream, report: Mapping[str, Any], seconds: float) -> dict[str, Any]:
    """The table's row (and the raw figures) from a backtest report."""
    reference = report["reference"]
    overall: dict[str, float | None] = dict(reference["overall"])
    after: dict[str, float | None] | None = reference.get("after_change")
    best_name, best_value = _best(overall)
    after_name, after_value = _best(after) if after else (None, None)
    detections = report["detections"]
    false_alarms = report["false_alarms"] if stream.change_at is not None else len(detections)
    versions = report["versions"]
    return {
        "stream": stream.name,
        "seed": stream.seed,
        "events": report["scenario"]["events"],
        "change": stream.change,
        "change_at": stream.change_at,
        "driftloop": overall.get("driftloop"),
        "best_river": best_value,
        "best_river_name": best_name,
        "driftloop_after": after.get("driftloop") if after else None,
        "best_river_after": after_value,
        "best_river_after_name": after_name,
        "overall": overall,
        "after_change": after,
        "drift_retrains": report["drift_retrains"],
        "trainings": len(report["trainings"]),
        "versions": len(versions),
        "promoted": sum(1 for v in versions if v["status"] == "champion"),
        # (version, trigger, first event it answered) for every version.
        "serving": [(v["version"], v["trigger"], v["serving_from_event"]) for v in versions],
        "detections": len(detections),
        "false_alarms": false_alarms,
        "detected_event": report["drift"].get("detected_event"),
        "delay_events": report["drift"].get("delay_events"),
        "detectors": sorted({d["detector"] for d in detections}),
        "seconds": round(seconds, 1),
    }


def run_job(job: Job) -> dict[str, Any]:
    """Read the stream, replay it in process and return its row (runs in a worker)."""
    from driftloop_cli.backtest.engine import LoopOptions
    from driftloop_cli.backtest.run import run_backtest
    from driftloop_cli.backtest.stream import read_stream
    from driftloop_core.featureset import load_featureset

    logging.getLogger("driftloop").setLevel(logging.WARNING)
    started = time.perf_counter()
    featureset = load_featureset(job.stream.featureset_path)
    with job.stream.jsonl_path.open(encoding="utf-8") as handle:
        stream = read_stream(handle, featureset, job.stream.jsonl_path)
    report = run_backtest(
        stream,
        featureset,
        LoopOptions(rate=job.rate, label_delay_s=job.label_delay_s, train_s=job.train_s),
        source=job.stream.jsonl_path.name,
        drift=drift_settings(job.cooldown_s),
        change_at=job.stream.change_at,
    )
    return row_of(job.stream, report, time.perf_counter() - started)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _named(value: float | None, name: str | None) -> str:
    return "-" if value is None else f"{_percent(value)} ({name})"


COLUMNS = (
    "stream",
    "seed",
    "events",
    "change at",
    "Driftloop whole",
    "best river whole",
    f"Driftloop {AFTER_CHANGE} after change",
    "best river after change",
    "ARF whole",
    "HAT whole",
    "LR whole",
    "drift retrains",
    "detections",
    "false alarms",
    "seconds",
)


def table_line(row: Mapping[str, Any]) -> str:
    """One markdown table line."""
    change = "-" if row["change_at"] is None else f"{row['change_at']} ({row['change']})"
    cells = [
        row["stream"],
        str(row["seed"]),
        str(row["events"]),
        change,
        _percent(row["driftloop"]),
        _named(row["best_river"], row["best_river_name"]),
        _percent(row["driftloop_after"]),
        _named(row["best_river_after"], row["best_river_after_name"]),
        *(_percent(row["overall"].get(name)) for name in RIVER),
        str(row["drift_retrains"]),
        str(row["detections"]),
        str(row["false_alarms"]),
        f"{row['seconds']:.0f}",
    ]
    return "| " + " | ".join(cells) + " |"


def verdict(rows: Sequence[Mapping[str, Any]]) -> str:
    """How many rows Driftloop matched or beat river's best, whole and after the change."""
    whole = [r for r in rows if r["driftloop"] is not None and r["best_river"] is not None]
    won = sum(1 for r in whole if r["driftloop"] >= r["best_river"])
    after = [
        r for r in rows if r["driftloop_after"] is not None and r["best_river_after"] is not None
    ]
    won_after = sum(1 for r in after if r["driftloop_after"] >= r["best_river_after"])
    return (
        f"Driftloop >= best river: whole stream in {won} of {len(whole)} rows; "
        f"{AFTER_CHANGE} events after the change in {won_after} of {len(after)} rows."
    )


def markdown(rows: Sequence[Mapping[str, Any]], settings: Mapping[str, Any]) -> str:
    """The table, the settings it ran with and the verdict line."""
    lines = [
        "# Driftloop adaptation against river",
        "",
        (
            "In process, simulated clock: "
            if settings.get("mode", "in-process") == "in-process"
            else "Through a fresh real stack for each stream (`driftloop up`), wall clock: "
        )
        + f"{settings['rate']:g} events/s, labels {settings['label_delay_s']:g} s later"
        + (
            f", a training run taking {settings['train_s']:g} s. "
            if settings.get("mode", "in-process") == "in-process"
            else ". "
        )
        + "Accuracy is prequential on every labelled event (an event answered by no model "
        "yet counts as a guess of the majority class so far). Drift settings: "
        + ", ".join(f"{k}={v}" for k, v in settings["drift"].items())
        + ".",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
        *(table_line(row) for row in rows),
        "",
        verdict(rows),
        "",
    ]
    return "\n".join(lines)


def stack_env(home: Path, cooldown_s: float | None) -> dict[str, str]:
    """The environment of a private stack: its own home, a free port for everything."""
    from driftloop_core.broker import free_port
    from driftloop_core.settings import Endpoints

    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTLOOP_")}
    env |= {k: v for k, v in os.environ.items() if k.startswith("DRIFTLOOP_DRIFT_")}
    port = free_port()
    env["DRIFTLOOP_HOME"] = str(home)
    env["DRIFTLOOP_ENDPOINTS__BROKER_PORT"] = str(port)
    env["DRIFTLOOP_KAFKA_BOOTSTRAP"] = f"127.0.0.1:{port}"
    for name, field in Endpoints.model_fields.items():
        if field.annotation is str:
            env[f"DRIFTLOOP_ENDPOINTS__{name.upper()}"] = f"127.0.0.1:{free_port()}"
    env["DRIFTLOOP_ENDPOINTS__METRICS"] = json.dumps(dict.fromkeys(Endpoints().metrics, 0))
    if cooldown_s is not None:
        env["DRIFTLOOP_DRIFT_COOLDOWN_S"] = str(cooldown_s)
    return env


@contextlib.contextmanager
def running_stack(env: Mapping[str, str], folder: Path, *up_args: str) -> Iterator[None]:
    """`driftloop up` with `env` (output in `folder/up.log`), ready before the
    body runs and stopped after it."""
    cli = [sys.executable, "-m", "driftloop_cli"]
    with (folder / "up.log").open("w") as log:
        up = subprocess.Popen([*cli, "up", *up_args], env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 180
            while subprocess.run([*cli, "status"], env=env, capture_output=True).returncode:
                if up.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the stack did not get ready; see {folder / 'up.log'}")
                time.sleep(1)
            yield
        finally:
            up.send_signal(signal.SIGTERM)
            up.wait(timeout=120)


def run_stack_job(job: Job, work: Path) -> dict[str, Any]:
    """Start a fresh stack with the stream's feature set, play the stream through
    it with `driftloop backtest --mode stack`, stop the stack; the row."""
    cli = [sys.executable, "-m", "driftloop_cli"]
    folder = work / f"stack-{job.stream.name}-{job.stream.seed}"
    folder.mkdir(parents=True, exist_ok=True)
    env = stack_env(folder / "home", job.cooldown_s)
    started = time.perf_counter()
    with running_stack(env, folder, "--featureset", str(job.stream.featureset_path)):
        out = folder / "report"
        done = subprocess.run(
            [
                *cli,
                "backtest",
                str(job.stream.jsonl_path),
                "-f",
                str(job.stream.featureset_path),
                "--mode",
                "stack",
                "--rate",
                str(job.rate),
                "--label-delay",
                str(job.label_delay_s),
                "--out",
                str(out),
                *(
                    []
                    if job.stream.change_at is None
                    else ["--change-at", str(job.stream.change_at)]
                ),
            ],
            env=env,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise RuntimeError(f"driftloop backtest failed: {done.stderr[-2000:]}")
    report = json.loads((out / "report.json").read_text())
    return row_of(job.stream, report, time.perf_counter() - started)


def _drift_knobs(cooldown_s: float | None) -> dict[str, Any]:
    """The drift settings that shape the loop (not its topics or state file)."""
    dumped: dict[str, Any] = drift_settings(cooldown_s).model_dump(mode="json")
    return {
        k: v
        for k, v in dumped.items()
        if not k.endswith("_topic") and k not in ("state_path", "snapshot_interval_s")
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=6000, help="labelled events a stream")
    parser.add_argument("--seeds", default="1,2", help="comma-separated seeds")
    parser.add_argument("--streams", default="all", help=f"'all' or some of {', '.join(STREAMS)}")
    parser.add_argument("--out", type=Path, default=Path("adaptation.md"), help="markdown table")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw rows here")
    parser.add_argument("--rate", type=float, default=100.0, help="events per second")
    parser.add_argument("--label-delay", type=float, default=2.0, help="seconds to each label")
    parser.add_argument("--train-s", type=float, default=1.5, help="seconds a training run takes")
    parser.add_argument(
        "--cooldown-s",
        type=float,
        default=None,
        help="drift cooldown (default: DRIFTLOOP_DRIFT_COOLDOWN_S or the service's)",
    )
    parser.add_argument("--jobs", type=int, default=1, help="backtests run at once")
    parser.add_argument(
        "--work", type=Path, default=None, help="folder for the streams (default: a temporary one)"
    )
    parser.add_argument("--entities", type=int, default=DEFAULT_ENTITIES)
    parser.add_argument(
        "--mode",
        choices=("in-process", "stack"),
        default="in-process",
        help="the in-process engine, or a fresh real stack for each stream",
    )
    args = parser.parse_args(argv)
    try:
        names = parse_names(args.streams)
    except ValueError as error:
        parser.error(f"--streams: {error}")
    seeds = parse_seeds(args.seeds)
    if args.jobs < 1:
        parser.error("--jobs: at least 1")

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="driftloop-adaptation-") as temporary:
        work = args.work or Path(temporary)
        written = write_streams(names, seeds, work, events=args.events, entities=args.entities)
        jobs = [
            Job(s, args.rate, args.label_delay, args.train_s, args.cooldown_s, args.mode)
            for s in written
        ]
        at_once = 1 if args.mode == "stack" else args.jobs
        print(f"{len(jobs)} backtests of {args.events} events ({args.mode}), {at_once} at a time")
        rows: list[dict[str, Any]] = []
        if args.mode == "stack":
            for job in jobs:
                rows.append(run_stack_job(job, work))
                print(f"  {rows[-1]['stream']} seed {rows[-1]['seed']}: done", flush=True)
        elif args.jobs == 1:
            for job in jobs:
                rows.append(run_job(job))
                print(f"  {rows[-1]['stream']} seed {rows[-1]['seed']}: done", flush=True)
        else:
            with ProcessPoolExecutor(max_workers=args.jobs) as pool:
                for row in pool.map(run_job, jobs):
                    rows.append(row)
                    print(f"  {row['stream']} seed {row['seed']}: done", flush=True)
    elapsed = time.perf_counter() - started

    settings = {
        "mode": args.mode,
        "rate": args.rate,
        "label_delay_s": args.label_delay,
        "train_s": args.train_s,
        "drift": _drift_knobs(args.cooldown_s),
    }
    text = markdown(rows, settings) + f"\n{len(rows)} backtests in {elapsed:.0f} s.\n"
    args.out.write_text(text, encoding="utf-8")
    print()
    print(text)
    if args.json is not None:
        payload = {"settings": settings, "seconds": round(elapsed, 1), "rows": rows}
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.out} and {args.json}")
    else:
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
