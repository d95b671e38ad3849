"""Replays a demo scenario through the drift engine and the trainer, in process.

No broker and no services: the same `DriftEngine` the drift service runs, the
same `train` the trainer runs and the registry's promotion gate, driven on a
simulated clock (events at `--rate` per second, labels `--label-delay` seconds
later, a training run taking `--train-s`). It answers in seconds what a demo
run answers in minutes (which detector fires, on which version, what each
retrain is trained on, and the accuracy before, during and after), so the
detector and policy defaults can be checked over many seeds and start offsets.

    .venv/bin/python loadtests/loop_replay.py --scenario drift --seeds 7,8,9
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from driftloop.v1 import events_pb2
from driftloop_cli.demo.scenario import DemoEvent, ScenarioConfig, build_scenario
from driftloop_core.featureset import FeatureSet, default_featureset_path, load_featureset
from driftloop_drift.config import DriftSettings
from driftloop_drift.domain.join import LabelSeen, PredictionSeen
from driftloop_drift.handlers import DriftEngine, EngineResult
from driftloop_trainer.onnx_model import reference_distributions
from driftloop_trainer.training import (
    TrainedModel,
    TrainingConfig,
    TrainingData,
    TrainingError,
    positive_probability,
    train,
)

FEATURES = ("amount", "channel", "hour", "amount_mean_1h", "txn_count_10m")


def features_of(event: DemoEvent) -> dict[str, float | str]:
    return {
        "amount": event.amount,
        "channel": event.channel,
        "hour": float(event.hour),
        "amount_mean_1h": math.nan if event.amount_mean_1h is None else event.amount_mean_1h,
        "txn_count_10m": float(event.txn_count_10m),
    }


def training_data(events: list[DemoEvent], start_ms: int) -> TrainingData:
    columns: dict[str, Any] = {}
    for name in FEATURES:
        values = [features_of(e)[name] for e in events]
        columns[name] = (
            np.asarray(values, dtype=object)
            if name == "channel"
            else np.asarray(values, dtype=np.float32).astype(np.float64)
        )
    return TrainingData(
        FEATURES,
        columns,
        np.asarray([e.is_fraud for e in events], dtype=np.int64),
        np.asarray([start_ms + e.offset_ms for e in events], dtype=np.int64),
        tuple(e.event_id for e in events),
    )


@dataclass
class Version:
    number: int
    model: TrainedModel
    trigger: str
    serving_from: int  # first event index it answers
    rows: int
    window: str
    promoted: bool = False


@dataclass
class Replay:
    featureset: FeatureSet
    drift: DriftSettings
    rate: float = 50.0
    label_delay_s: float = 2.0
    train_s: float = 1.5
    min_rows: int = 300
    margin: float = 0.005
    versions: list[Version] = field(default_factory=list)
    log: list[str] = field(default_factory=list)

    def run(self, config: ScenarioConfig) -> dict[str, Any]:
        scenario = build_scenario(config)
        engine = DriftEngine(self.featureset, self.drift.engine_config())
        start_ms = 1_700_000_000_000
        step_ms = 1000.0 / self.rate
        labelled: list[DemoEvent] = []  # in arrival order
        pending_labels: list[tuple[int, DemoEvent]] = []
        pending_training: list[tuple[int, events_pb2.TrainingRequested]] = []
        champion: Version | None = None
        answers: list[tuple[int, int | None, int]] = []  # (index, version, correct)
        alarms: list[tuple[int, str, str, int]] = []
        events = list(scenario)

        def handle(decided: EngineResult, now_ms: int, index: int) -> None:
            for message in decided.events:
                if isinstance(message, events_pb2.DriftDetected):
                    alarms.append((index, message.detector, message.feature, message.model_version))
                    self.log.append(
                        f"event {index}: drift {message.detector} {message.feature} "
                        f"on v{message.model_version} stat {message.statistic:.4g}"
                    )
                elif isinstance(message, events_pb2.TrainingRequested):
                    pending_training.append((now_ms + int(self.train_s * 1000), message))

        for event in events:
            now_ms = int(event.index * step_ms)
            # Labels due by now.
            while pending_labels and pending_labels[0][0] <= now_ms:
                due, labelled_event = pending_labels.pop(0)
                labelled.append(labelled_event)
                handle(
                    engine.on_label(
                        LabelSeen(
                            labelled_event.event_id,
                            "payments",
                            labelled_event.is_fraud,
                            start_ms + labelled_event.offset_ms,
                        ),
                        due,
                    ),
                    due,
                    event.index,
                )
            # Training runs done by now.
            while pending_training and pending_training[0][0] <= now_ms:
                done_ms, request = pending_training.pop(0)
                champion = self._train(
                    request, labelled, start_ms, champion, engine, event.index, done_ms
                )
            pending_labels.append((now_ms + int(self.label_delay_s * 1000), event))
            if champion is None:
                answers.append((event.index, None, 0))
                continue
            data = training_data([event], start_ms)
            probability = float(positive_probability(champion.model.pipeline, data)[0])
            predicted = int(probability >= 0.5)
            answers.append((event.index, champion.number, int(predicted == event.is_fraud)))
            handle(
                engine.on_prediction(
                    PredictionSeen(
                        event.event_id,
                        "payments",
                        champion.number,
                        predicted,
                        start_ms + event.offset_ms,
                        features_of(event),
                    ),
                    now_ms,
                ),
                now_ms,
                event.index,
            )
        return self._summary(scenario.onset, answers, alarms)

    def _train(
        self,
        request: events_pb2.TrainingRequested,
        labelled: list[DemoEvent],
        start_ms: int,
        champion: Version | None,
        engine: DriftEngine,
        index: int,
        now_ms: int,
    ) -> Version | None:
        rows = sorted(labelled, key=lambda e: e.offset_ms)
        window = request.window
        if window.WhichOneof("kind") == "time_range":
            lo = window.time_range.start.ToMilliseconds()
            hi = window.time_range.end.ToMilliseconds()
            rows = [e for e in rows if lo <= start_ms + e.offset_ms < hi]
            what = f"time range from event {rows[0].index if rows else '?'}"
        else:
            rows = rows[-window.last_n :]
            what = f"last {window.last_n}"
        trigger = events_pb2.TrainingTrigger.Name(request.trigger).removeprefix("TRAINING_TRIGGER_")
        engine.on_outcome("payments", request.request_id, now_ms)
        if len(rows) < self.min_rows:
            self.log.append(f"event {index}: {trigger} refused, {len(rows)} rows ({what})")
            return champion
        data = training_data(rows, start_ms)
        try:
            model = train(data, self.featureset, TrainingConfig(min_rows=self.min_rows))
        except TrainingError as error:
            self.log.append(f"event {index}: training failed: {error}")
            return champion
        number = len(self.versions) + 1
        version = Version(number, model, trigger, index, len(rows), what)
        self.versions.append(version)
        score = model.metrics["roc_auc"]
        promote = champion is None
        if champion is not None:
            old = positive_probability(champion.model.pipeline, model.evaluation)
            from driftloop_trainer.training import classification_metrics

            old_score = classification_metrics(model.evaluation.labels, old)["roc_auc"]
            promote = score >= old_score + self.margin
            self.log.append(
                f"event {index}: v{number} ({trigger}, {len(rows)} rows, {what}) "
                f"roc_auc {score:.3f} vs champion {old_score:.3f}: "
                f"{'promoted' if promote else 'candidate'}"
            )
        else:
            self.log.append(
                f"event {index}: v{number} ({trigger}, {len(rows)} rows, {what}) "
                f"roc_auc {score:.3f}: promoted"
            )
        if not promote:
            return champion
        version.promoted = True
        reference = reference_distributions(model.reference, self.featureset)
        engine.on_promoted(number, reference, now_ms)
        return version

    def _summary(
        self,
        onset: int | None,
        answers: list[tuple[int, int | None, int]],
        alarms: list[tuple[int, str, str, int]],
    ) -> dict[str, Any]:
        answered = [a for a in answers if a[1] is not None]
        post = [
            v.number
            for v in self.versions
            if v.promoted and onset is not None and v.serving_from >= onset
        ]
        newest = post[-1] if post else None

        def acc(rows: list[tuple[int, int | None, int]]) -> float | None:
            return round(sum(r[2] for r in rows) / len(rows), 3) if rows else None

        if onset is None:
            before, during, after = answered, [], []
        else:
            before = [a for a in answered if a[0] < onset]
            late = [a for a in answered if a[0] >= onset]
            during = [a for a in late if newest is None or (a[1] or 0) < newest]
            after = [a for a in late if newest is not None and (a[1] or 0) >= newest]
        return {
            "versions": [
                (v.number, v.trigger, v.serving_from, v.rows, v.window, v.promoted)
                for v in self.versions
            ],
            "alarms": alarms,
            "before": acc(before),
            "during": acc(during),
            "after": acc(after),
            "after_last_300": acc(after[-300:]),
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
        replay = Replay(
            featureset,
            DriftSettings(cooldown_s=args.cooldown_s, min_post_drift_rows=args.min_post_drift_rows),
            rate=args.rate,
            label_delay_s=args.label_delay,
            train_s=args.train_s,
        )
        result = replay.run(
            ScenarioConfig(
                kind=args.scenario, seed=seed, events=args.events, drift_at=args.drift_at
            )
        )
        print(f"seed {seed}: {result['versions']}")
        print(
            f"  accuracy before {result['before']} during {result['during']} "
            f"after {result['after']} (last 300: {result['after_last_300']})"
        )
        print(f"  alarms: {[(a[0], a[1], a[2], a[3]) for a in result['alarms']]}")
        if args.verbose:
            for line in replay.log:
                print("   ", line)


if __name__ == "__main__":
    main()
