"""Synthetic labelled streams for `driftloop backtest`, made with river's generators.

Each stream is a JSONL file of raw observations, one a second, as a producer
sends them to `events.raw` (the feature set's entity, timestamp and fields,
with the 0/1 label inline), and a feature-set YAML that describes them. The
streams and the event index where their concept changes:

| stream | generator | change |
|---|---|---|
| agrawal-abrupt | `synth.Agrawal` function 0, then function 2 | abrupt, at the middle |
| agrawal-stationary | `synth.Agrawal` function 0 | none |
| sea-abrupt | `synth.SEA` variant 0, then variant 3, 10% noise | abrupt, at the middle |
| sea-stationary | `synth.SEA` variant 0, 10% noise | none |
| hyperplane-gradual | two `synth.Hyperplane` planes, 6 features, 5% noise | gradual, mid-way |
| stagger-abrupt | `synth.STAGGER` function 0, then function 1 | abrupt, at the middle |

The gradual change mixes the two concepts with river's `ConceptDriftStream`
(a sigmoid 1000 events wide): its recorded change index is the centre, where
half the events come from each concept.

The loan streams (Agrawal) have a feature-store aggregation, the number of
loans of the customer over the last hour. So that this count is steady from
the first labelled event (rather than rising through the first hour of the
stream, a trend that belongs to no concept), their file starts with an hour of
unlabelled observations, which only feed the aggregates (`--no-history`
leaves it out). The labelled events do not depend on it.

    .venv/bin/python loadtests/streams.py --out streams/ --events 6000 --seeds 1,2,3
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from river.datasets import synth
from river.datasets.base import SyntheticDataset

# 2025-11-22T08:26:40Z: every stream's first labelled event.
START_MS = 1_763_800_000_000
DEFAULT_EVENTS = 6000
DEFAULT_ENTITIES = 25
# Events over which the gradual change moves from one concept to the other.
GRADUAL_WIDTH = 1000
# Seeds of the second concept and of the unlabelled history are offset from
# the stream's seed, so that they never repeat its random draws.
_AFTER_SEED = 1
_HISTORY_SEED = 10_000

Sample = tuple[dict[Any, Any], Any]
Value = float | int | str


@dataclass(frozen=True)
class SyntheticStream:
    """One written stream: where its files are and the event index where its
    concept changes (None when it never does)."""

    name: str
    seed: int
    featureset_path: Path
    jsonl_path: Path
    change_at: int | None
    events: int = 0
    change: Literal["abrupt", "gradual"] | None = None
    # Unlabelled observations before the first labelled one (aggregates only).
    history: int = 0


@dataclass(frozen=True)
class Family:
    """A generator's feature set, and how one of its samples becomes an observation."""

    name: str
    featureset: Mapping[str, Any]
    # The observation's fields (without event id, entity, timestamp or label).
    fields: Callable[[Mapping[Any, Any]], dict[str, Value]]
    # Entity id prefix, e.g. "c" for customers c00, c01, ...
    entity_prefix: str
    # Unlabelled observations written first, so that every aggregation's
    # window is full from the first labelled event.
    history_s: int = 0

    @property
    def entity(self) -> str:
        return str(self.featureset["entity"])

    @property
    def label(self) -> str:
        return str(self.featureset["label"])

    @property
    def timestamp(self) -> str:
        return str(self.featureset["timestamp"])


@dataclass(frozen=True)
class StreamSpec:
    """A named stream: its family, the kind of change, and how its samples are drawn."""

    name: str
    family: Family
    change: Literal["abrupt", "gradual"] | None
    # (seed, events) -> the samples, and the index where the concept changes.
    samples: Callable[[int, int], tuple[Iterable[Sample], int | None]]
    # seed -> samples of the stream's first concept, for the unlabelled history.
    base: Callable[[int], Iterable[Sample]]
    description: str


def _agrawal_fields(x: Mapping[Any, Any]) -> dict[str, Value]:
    return {
        "salary": round(float(x["salary"]), 2),
        "commission": round(float(x["commission"]), 2),
        "age": int(x["age"]),
        "elevel": str(x["elevel"]),
        "hvalue": round(float(x["hvalue"]), 2),
        "loan": round(float(x["loan"]), 2),
    }


def _sea_fields(x: Mapping[Any, Any]) -> dict[str, Value]:
    return {f"x{i + 1}": round(float(x[i]), 4) for i in range(3)}


def _hyperplane_fields(x: Mapping[Any, Any]) -> dict[str, Value]:
    return {f"x{i + 1}": round(float(x[i]), 5) for i in range(6)}


_SIZES = ("small", "medium", "large")
# river's STAGGER: colour 0 is red and 2 is green; shape 0 is a circle.
_COLOURS = ("red", "blue", "green")
_SHAPES = ("circle", "square", "triangle")


def _stagger_fields(x: Mapping[Any, Any]) -> dict[str, Value]:
    return {
        "size": _SIZES[int(x["size"])],
        "colour": _COLOURS[int(x["color"])],
        "shape": _SHAPES[int(x["shape"])],
    }


def _numbers(names: Sequence[str], low: float, high: float) -> dict[str, Any]:
    return {name: {"type": "float", "min": low, "max": high} for name in names}


AGRAWAL = Family(
    name="loans",
    featureset={
        "name": "loans",
        "entity": "customer_id",
        "timestamp": "ts",
        "label": "approved",
        "fields": {
            "salary": {"type": "float", "min": 0},
            "commission": {"type": "float", "min": 0},
            "age": {"type": "int", "min": 0, "max": 120},
            "elevel": {"type": "category", "values": ["0", "1", "2", "3", "4"]},
            "hvalue": {"type": "float", "min": 0},
            "loan": {"type": "float", "min": 0},
        },
        "aggregations": [{"name": "loan_count_1h", "field": "loan", "fn": "count", "window": "1h"}],
        "model": {
            "task": "binary_classification",
            "features": [
                "salary",
                "commission",
                "age",
                "elevel",
                "hvalue",
                "loan",
                "loan_count_1h",
            ],
        },
    },
    fields=_agrawal_fields,
    entity_prefix="c",
    history_s=3600,
)

SEA = Family(
    name="sea",
    featureset={
        "name": "sea",
        "entity": "sensor_id",
        "timestamp": "ts",
        "label": "label",
        "fields": _numbers(["x1", "x2", "x3"], 0, 10),
        "model": {"task": "binary_classification", "features": ["x1", "x2", "x3"]},
    },
    fields=_sea_fields,
    entity_prefix="s",
)

HYPERPLANE = Family(
    name="hyperplane",
    featureset={
        "name": "hyperplane",
        "entity": "source_id",
        "timestamp": "ts",
        "label": "label",
        "fields": _numbers([f"x{i}" for i in range(1, 7)], 0, 1),
        "model": {
            "task": "binary_classification",
            "features": [f"x{i}" for i in range(1, 7)],
        },
    },
    fields=_hyperplane_fields,
    entity_prefix="h",
)

STAGGER = Family(
    name="stagger",
    featureset={
        "name": "stagger",
        "entity": "object_id",
        "timestamp": "ts",
        "label": "label",
        "fields": {
            "size": {"type": "category", "values": list(_SIZES)},
            "colour": {"type": "category", "values": list(_COLOURS)},
            "shape": {"type": "category", "values": list(_SHAPES)},
        },
        "model": {"task": "binary_classification", "features": ["size", "colour", "shape"]},
    },
    fields=_stagger_fields,
    entity_prefix="o",
)


def _abrupt(before: Iterable[Sample], after: Iterable[Sample], events: int) -> Iterator[Sample]:
    """The first half of `events` from `before`, the rest from `after`."""
    change_at = events // 2
    return itertools.chain(
        itertools.islice(before, change_at), itertools.islice(after, events - change_at)
    )


def _agrawal(function: int, seed: int) -> SyntheticDataset:
    return synth.Agrawal(classification_function=function, seed=seed)


def _sea(variant: int, seed: int) -> SyntheticDataset:
    return synth.SEA(variant=variant, noise=0.1, seed=seed)


def _hyperplane(seed: int) -> SyntheticDataset:
    return synth.Hyperplane(seed=seed, n_features=6, mag_change=0.0, noise_percentage=0.05)


def _stagger(function: int, seed: int) -> SyntheticDataset:
    return synth.STAGGER(classification_function=function, seed=seed)


def _agrawal_abrupt(seed: int, events: int) -> tuple[Iterable[Sample], int | None]:
    before, after = _agrawal(0, seed), _agrawal(2, seed + _AFTER_SEED)
    return _abrupt(before, after, events), events // 2


def _agrawal_stationary(seed: int, events: int) -> tuple[Iterable[Sample], int | None]:
    return _agrawal(0, seed), None


def _sea_abrupt(seed: int, events: int) -> tuple[Iterable[Sample], int | None]:
    return _abrupt(_sea(0, seed), _sea(3, seed + _AFTER_SEED), events), events // 2


def _sea_stationary(seed: int, events: int) -> tuple[Iterable[Sample], int | None]:
    return _sea(0, seed), None


def _hyperplane_gradual(seed: int, events: int) -> tuple[Iterable[Sample], int | None]:
    change_at = events // 2
    mixed = synth.ConceptDriftStream(
        stream=_hyperplane(seed),
        drift_stream=_hyperplane(seed + _AFTER_SEED),
        # river counts samples from 1: sample `position` is drawn half from each.
        position=change_at + 1,
        width=GRADUAL_WIDTH,
        seed=seed,
    )
    return mixed, change_at


def _stagger_abrupt(seed: int, events: int) -> tuple[Iterable[Sample], int | None]:
    return _abrupt(_stagger(0, seed), _stagger(1, seed + _AFTER_SEED), events), events // 2


STREAMS: dict[str, StreamSpec] = {
    spec.name: spec
    for spec in (
        StreamSpec(
            "agrawal-abrupt",
            AGRAWAL,
            "abrupt",
            _agrawal_abrupt,
            lambda seed: _agrawal(0, seed),
            "Agrawal loans, function 0 (age bands) then 2 (age and education level)",
        ),
        StreamSpec(
            "sea-abrupt",
            SEA,
            "abrupt",
            _sea_abrupt,
            lambda seed: _sea(0, seed),
            "SEA, x1 + x2 > 8 then > 9.5, 10% of labels flipped",
        ),
        StreamSpec(
            "hyperplane-gradual",
            HYPERPLANE,
            "gradual",
            _hyperplane_gradual,
            _hyperplane,
            f"rotating hyperplane in 6 dimensions, one plane to another over "
            f"{GRADUAL_WIDTH} events, 5% noise",
        ),
        StreamSpec(
            "stagger-abrupt",
            STAGGER,
            "abrupt",
            _stagger_abrupt,
            lambda seed: _stagger(0, seed),
            "STAGGER, small and red, then green or circle",
        ),
        StreamSpec(
            "agrawal-stationary",
            AGRAWAL,
            None,
            _agrawal_stationary,
            lambda seed: _agrawal(0, seed),
            "Agrawal loans, function 0 throughout",
        ),
        StreamSpec(
            "sea-stationary",
            SEA,
            None,
            _sea_stationary,
            lambda seed: _sea(0, seed),
            "SEA, x1 + x2 > 8 throughout, 10% of labels flipped",
        ),
    )
}


def parse_names(text: str) -> list[str]:
    """Stream names from "all" or a comma-separated list; raises ValueError on an unknown one."""
    if text.strip() == "all":
        return list(STREAMS)
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in STREAMS]
    if unknown or not names:
        raise ValueError(
            f"unknown stream {', '.join(unknown) or '(none)'}; known: {', '.join(STREAMS)}"
        )
    return names


def parse_seeds(text: str) -> list[int]:
    """Seeds from a comma-separated list such as "1,2,3"."""
    return [int(part) for part in text.split(",") if part.strip()]


def write_featureset(family: Family, out: Path) -> Path:
    """The family's feature-set YAML under `out/featuresets/`; its path."""
    path = out / "featuresets" / f"{family.name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(dict(family.featureset), sort_keys=False, default_flow_style=None)
    path.write_text(text, encoding="utf-8")
    return path


def observation_lines(
    spec: StreamSpec,
    seed: int,
    events: int,
    *,
    entities: int = DEFAULT_ENTITIES,
    start_ms: int = START_MS,
    history: bool = True,
) -> tuple[list[str], int | None, int]:
    """The stream's JSONL lines, the index of its change (among the labelled
    events) and the number of unlabelled history lines in front."""
    family = spec.family
    samples, change_at = spec.samples(seed, events)
    lines: list[str] = []
    earlier = family.history_s if history else 0
    prefix = f"{spec.name}-s{seed}"

    def line(event_id: str, i: int, x: Mapping[Any, Any], label: int | None) -> str:
        record: dict[str, Value] = {
            "event_id": event_id,
            family.entity: f"{family.entity_prefix}{i % entities:03d}",
            family.timestamp: start_ms + i * 1000,
            **family.fields(x),
        }
        if label is not None:
            record[family.label] = label
        return json.dumps(record)

    past = itertools.islice(spec.base(seed + _HISTORY_SEED), earlier)
    for k, (x, _) in enumerate(past):
        lines.append(line(f"{prefix}-h{k:06d}", k - earlier, x, None))
    for i, (x, y) in enumerate(itertools.islice(samples, events)):
        lines.append(line(f"{prefix}-{i:06d}", i, x, int(y)))
    return lines, change_at, earlier


def write_stream(
    name: str,
    seed: int,
    out: Path,
    *,
    events: int = DEFAULT_EVENTS,
    entities: int = DEFAULT_ENTITIES,
    history: bool = True,
) -> SyntheticStream:
    """Write stream `name` for `seed` (and its feature set) under `out`."""
    spec = STREAMS[name]
    if events < 2:
        raise ValueError(f"events: {events} is too few for a stream")
    out.mkdir(parents=True, exist_ok=True)
    featureset = write_featureset(spec.family, out)
    lines, change_at, earlier = observation_lines(
        spec, seed, events, entities=entities, history=history
    )
    path = out / f"{name}-seed{seed}.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return SyntheticStream(name, seed, featureset, path, change_at, events, spec.change, earlier)


def write_streams(
    names: Iterable[str],
    seeds: Iterable[int],
    out: Path,
    *,
    events: int = DEFAULT_EVENTS,
    entities: int = DEFAULT_ENTITIES,
    history: bool = True,
) -> list[SyntheticStream]:
    """Every stream for every seed, and `out/streams.json` listing them."""
    seeds = list(seeds)
    written = [
        write_stream(name, seed, out, events=events, entities=entities, history=history)
        for name in names
        for seed in seeds
    ]
    manifest = [
        asdict(s) | {"featureset_path": str(s.featureset_path), "jsonl_path": str(s.jsonl_path)}
        for s in written
    ]
    (out / "streams.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return written


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the files")
    parser.add_argument("--events", type=int, default=DEFAULT_EVENTS, help="labelled events")
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated seeds")
    parser.add_argument("--streams", default="all", help=f"'all' or some of {', '.join(STREAMS)}")
    parser.add_argument(
        "--entities", type=int, default=DEFAULT_ENTITIES, help="entity ids cycled over"
    )
    parser.add_argument(
        "--no-history",
        action="store_true",
        help="no unlabelled hour in front of streams with an aggregation",
    )
    args = parser.parse_args(argv)
    try:
        names = parse_names(args.streams)
    except ValueError as error:
        parser.error(f"--streams: {error}")
    written = write_streams(
        names,
        parse_seeds(args.seeds),
        args.out,
        events=args.events,
        entities=args.entities,
        history=not args.no_history,
    )
    for s in written:
        change = "no change" if s.change_at is None else f"{s.change} change at {s.change_at}"
        print(f"{s.jsonl_path} ({s.events} events, {change}; feature set {s.featureset_path})")


if __name__ == "__main__":
    main()
