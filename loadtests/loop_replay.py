"""Replays a demo scenario through the drift engine and the trainer, in process.

A thin user of `driftloop backtest`'s engine (`driftloop_cli.backtest`): the
scenario's payments become the raw JSON a producer would send (the history
unlabelled, the scored events with their label), and are replayed on a
simulated clock (events at `--rate` per second, labels `--label-delay` seconds
later, a training run taking `--train-s`). It answers in seconds what a demo
run answers in minutes (which detector fires, on which version, what each
retrain is trained on, and the accuracy before, during and after), so the
detector and policy defaults can be checked over many seeds and start offsets.

    .venv/bin/python loadtests/loop_replay.py --scenario drift --seeds 7,8,9
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from driftloop_cli.backtest.engine import Backtest, LoopOptions
from driftloop_cli.backtest.stream import read_stream
from driftloop_cli.demo.report import build_report
from driftloop_cli.demo.scenario import Scenario, ScenarioConfig, build_scenario
from driftloop_cli.demo.timeline import accuracy, post_drift_version
from driftloop_core.featureset import default_featureset_path, load_featureset
from driftloop_drift.config import DriftSettings

START_MS = 1_700_000_000_000


def raw_lines(scenario: Scenario) -> list[str]:
    """The history (aggregates only), then every scored payment with its label."""
    lines = [json.dumps(e.observation(START_MS)) for e in scenario.history]
    lines += [
        json.dumps(e.observation(START_MS) | {"is_fraud": e.is_fraud}) for e in scenario.events
    ]
    return lines


def _three(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def replay(scenario: Scenario, backtest: Backtest) -> dict[str, Any]:
    stream = read_stream(raw_lines(scenario), backtest.featureset, "scenario")
    timeline = backtest.run(stream.events)
    index_of = {e.event_id: e.index for e in stream.events}
    figures = build_report(timeline, {}, scenario.onset, index_of)["accuracy"]
    newest = post_drift_version(timeline, scenario.onset)
    after = [
        s
        for s in timeline.answered()
        if newest is not None and s.index >= (scenario.onset or 0) and (s.version or 0) >= newest
    ]
    return {
        "versions": [
            (v.number, v.trigger, v.serving_from, v.rows, v.window, v.promoted)
            for v in backtest.versions
        ],
        "alarms": [(a.index, a.detector, a.feature, a.model_version) for a in backtest.alarms],
        "before": _three(figures["before"]),
        "during": _three(figures["during"]),
        "after": _three(figures["after"]),
        "after_last_300": None if not after else round(accuracy(after[-300:]) or 0.0, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="drift", choices=["drift", "stationary"])
    parser.add_argument("--seeds", default="7")
    parser.add_argument("--events", type=int, default=3600)
    parser.add_argument("--drift-at", type=float, default=0.55)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--label-delay", type=float, default=2.0)
    parser.add_argument("--train-s", type=float, default=1.5)
    parser.add_argument("--cooldown-s", type=float, default=10.0)
    parser.add_argument("--min-post-drift-rows", type=int, default=400)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    featureset = load_featureset(default_featureset_path())
    for seed in [int(s) for s in args.seeds.split(",")]:
        backtest = Backtest(
            featureset,
            DriftSettings(cooldown_s=args.cooldown_s, min_post_drift_rows=args.min_post_drift_rows),
            LoopOptions(rate=args.rate, label_delay_s=args.label_delay, train_s=args.train_s),
        )
        scenario = build_scenario(
            ScenarioConfig(
                kind=args.scenario, seed=seed, events=args.events, drift_at=args.drift_at
            )
        )
        result = replay(scenario, backtest)
        print(f"seed {seed}: {result['versions']}")
        print(
            f"  accuracy before {result['before']} during {result['during']} "
            f"after {result['after']} (last 300: {result['after_last_300']})"
        )
        print(f"  alarms: {result['alarms']}")
        if args.verbose:
            for line in backtest.log:
                print("   ", line)


if __name__ == "__main__":
    main()
