"""Shadow scoring's cost to the champion: Predict latency with a rollout open and without.

    .venv/bin/python loadtests/shadow_overhead.py [--seconds 10] [--rounds 2] [--json FILE]

Issue 18 asks that shadow scoring never add more than a stated amount to the
champion's answer latency, measured. While a rollout is open, every inference
process scores each Predict with the candidate too, after the caller's answer
was sent (a gRPC done-callback), and publishes the candidate's answer to
`predictions` marked `shadow`. The caller never waits for it, but it shares
the same CPU, event loop, batcher and Kafka producer with the next callers,
and that is what this measures.

The stack is inference_benchmark.py's, built with its own functions: `driftloop
up --only registry,features,ingestion,inference` under a temporary
DRIFTLOOP_HOME, champion v1 fitted with the trainer's pipeline and announced
on `models.trained`, 3,000 events ingested so that Predict fills online
aggregates. A second model of the same kind and size, fitted on other rows
(what a retrain produces), is registered as v2 and stays a candidate: both are
scored on one held-out slice and v2's `ModelTrained` carries v1's figures, but
the registry here runs with rollouts off and a promotion margin no gain can
reach, so its gate keeps v2 a candidate (checked before measuring).

Then Predict is measured at each concurrency in alternating phases: rollout
off, on, off, on, ... off (`--rounds` on phases, each between two off
phases, so that drift of the shared machine shows and each on phase is
compared with the mean of its two neighbours). A rollout is opened by
publishing `ModelRolloutStarted` for v2 on `models.rollouts`, with the
artifact the registry's GetVersion gives, and closed with `ModelRolloutEnded`
(rejected). Nothing judges it: drift is not started, and the registry ignores
rollout events it did not write.

A phase starts only once inference is known to be in the wanted state: probe
Predicts, each over a connection of its own (so that the kernel spreads them
over every inference process sharing the port), must all be followed by a
shadow answer of the open rollout on `predictions`, or none of them by any
shadow once it is closed. Every phase's predictions are then counted on the
topic (champion answers, shadow answers of its rollout), and the first
inference process's /metrics (only it serves them) gives the shadows it
published and skipped (`shadow_busy`: queue at least half full).

Prints the phases, then per round and concurrency the off and on figures, the
differences and ratios, and how many shadow answers were published. Exits
non-zero when requests failed or an on phase published no shadow answer (the
rollout never took effect); never for a figure.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import multiprocessing
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import grpc
import grpc.aio
from aiokafka import TopicPartition
from driftloop.v1 import (
    common_pb2,
    events_pb2,
    predictor_pb2,
    predictor_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)
from driftloop_core.featureset import FeatureSet, default_featureset_path, load_featureset
from driftloop_core.kafka import Publisher
from driftloop_core.kafka.consumer import reader
from driftloop_core.kafka.offsets import end_offsets
from driftloop_core.kafka.topics import Topics
from driftloop_core.settings import Settings
from driftloop_trainer.onnx_model import OnnxClassifier
from driftloop_trainer.training import classification_metrics
from inference_benchmark import (
    CALL_TIMEOUT_S,
    ENRICHMENT_EVENTS,
    MODEL,
    PARAMS,
    REQUEST_POOL,
    Cell,
    Options,
    _started,
    announce_model,
    check_enrichment,
    checked_timing,
    console,
    fit_driftloop_model,
    inference_workers,
    ingest_enrichment_events,
    make_rows,
    measure,
    predict_requests,
    private_stack,
    process,
    training_data,
    wait_model_ready,
    wait_serving,
)
from prometheus_client.parser import text_string_to_metric_families
from rich.table import Table

# The candidate: same algorithm and hyperparameters as the champion (so its
# shadow run costs what the champion's run costs), fitted on other rows.
CANDIDATE_ROWS_SEED = 23
# The held-out slice both versions are scored on for the registry's gate.
EVAL_ROWS = 4_000
EVAL_SEED = 41
CHAMPION_VERSION = 1
CANDIDATE_VERSION = 2
# A promotion margin no gain in roc_auc can reach: v2 stays a candidate
# whatever its figures (the gate's own rule, domain.decide_promotion).
UNREACHABLE_MARGIN = "1.0"

# Probe Predicts per check, each on a connection of its own: with two
# processes sharing the port, the chance that all of them land on one is 2^-11.
PROBES = 12
# After the probes' own predictions are read, how long their shadows may trail.
SHADOW_GRACE_S = 1.0
# Before a phase's end is noted: lets the last shadows leave the buffers.
DRAIN_S = 1.0
LOAD_TIMEOUT_S = 180.0

# Without it, channels to one target share one connection (the global
# subchannel pool), and every probe would reach the same process.
OWN_CONNECTION = (("grpc.use_local_subchannel_pool", 1),)

Mode = Literal["off", "on"]


# ---------------------------------------------------------------- the candidate


def fit_candidate(
    champion_onnx: bytes, featureset: FeatureSet
) -> tuple[events_pb2.ModelTrained, bytes]:
    """v2: the champion's recipe on other rows, with both versions' figures on
    one held-out slice, as the trainer reports a challenger."""
    trained, onnx_bytes = fit_driftloop_model(make_rows(seed=CANDIDATE_ROWS_SEED), featureset)
    held_out = training_data(make_rows(EVAL_ROWS, seed=EVAL_SEED), featureset)

    def scored(model: bytes) -> dict[str, float]:
        probabilities = OnnxClassifier(model).positive_probability(held_out)
        return classification_metrics(held_out.labels, probabilities)

    trained.metrics.clear()
    trained.metrics.update(scored(onnx_bytes))
    trained.champion_metrics.update(scored(champion_onnx))
    trained.champion_version = CHAMPION_VERSION
    trained.eval_rows = EVAL_ROWS
    trained.code_version = "loadtests/shadow_overhead.py"
    trained.dataset.uri = "synthetic:shadow_overhead"
    return trained, onnx_bytes


async def registered_candidate(settings: Settings, timeout_s: float = 60.0) -> common_pb2.Artifact:
    """v2's artifact as the registry holds it, once registered; refuses to go on
    if the gate promoted it (then there would be no candidate to shadow)."""
    deadline = time.monotonic() + timeout_s
    async with grpc.aio.insecure_channel(settings.endpoints.registry) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        while True:
            try:
                reply = await stub.GetVersion(
                    registry_pb2.GetVersionRequest(model=MODEL, version=CANDIDATE_VERSION),
                    timeout=5,
                )
                break
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.NOT_FOUND or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"v{CANDIDATE_VERSION} not registered in {timeout_s:.0f} s: {error}"
                    ) from error
            await asyncio.sleep(0.5)
        version = reply.model_version
        champion = await stub.GetChampion(registry_pb2.GetChampionRequest(model=MODEL), timeout=5)
    if (
        version.status != common_pb2.MODEL_VERSION_STATUS_CANDIDATE
        or champion.model_version.version != CHAMPION_VERSION
    ):
        raise RuntimeError(
            f"v{CANDIDATE_VERSION} is {common_pb2.ModelVersionStatus.Name(version.status)} "
            f"({version.status_reason}); the champion is v{champion.model_version.version}"
        )
    console.print(f"  v{CANDIDATE_VERSION} registered as a candidate: {version.status_reason}")
    return version.artifact


# ------------------------------------------------------------------ rollouts


async def publish_rollout(
    settings: Settings, rollout_id: str, artifact: common_pb2.Artifact | None
) -> None:
    """`ModelRolloutStarted` for v2 with `artifact`, or (None) its `ModelRolloutEnded`,
    as the registry would publish them."""
    event: events_pb2.ModelRolloutStarted | events_pb2.ModelRolloutEnded
    if artifact is not None:
        event = events_pb2.ModelRolloutStarted(
            rollout_id=rollout_id,
            model=MODEL,
            candidate_version=CANDIDATE_VERSION,
            champion_version=CHAMPION_VERSION,
            artifact=artifact,
            reason="loadtests/shadow_overhead.py: measuring what shadow scoring costs",
            kind=events_pb2.ROLLOUT_KIND_TRIAL,
        )
        event.started_at.GetCurrentTime()
        event_id = f"{rollout_id}-started"
    else:
        event = events_pb2.ModelRolloutEnded(
            rollout_id=rollout_id,
            model=MODEL,
            candidate_version=CANDIDATE_VERSION,
            champion_version=CHAMPION_VERSION,
            outcome=events_pb2.ROLLOUT_OUTCOME_REJECTED,
            reason="loadtests/shadow_overhead.py: measurement done",
            kind=events_pb2.ROLLOUT_KIND_TRIAL,
        )
        event.ended_at.GetCurrentTime()
        event_id = f"{rollout_id}-ended"
    async with Publisher(settings.for_service("shadow-overhead")) as publisher:
        await publisher.publish_event(event, key=MODEL, event_id=event_id)


# --------------------------------------------------------------- predictions


Positions = dict[TopicPartition, int]


@dataclass
class Tally:
    """Predictions on the topic over a stretch: the champion's answers, and the
    shadow answers of the rollout looked for and of any other."""

    champion: int = 0
    shadows: int = 0
    other_shadows: int = 0


class PredictionsTopic:
    """A reader of every partition of `predictions`, outside any group."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._consumer: Any = None
        self.partitions: list[TopicPartition] = []

    async def __aenter__(self) -> PredictionsTopic:
        consumer = reader(self._settings, client_suffix="shadow-overhead")
        await consumer.start()
        self._consumer = consumer
        await consumer.topics()  # refreshes the metadata partitions_for_topic reads
        topic = Topics.PREDICTIONS
        self.partitions = [
            TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        consumer.assign(self.partitions)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.stop()

    async def ends(self) -> Positions:
        """Where every partition ends now (right on the embedded broker too)."""
        return await end_offsets(self._settings.kafka, self._consumer, self.partitions)

    async def positions(self) -> Positions:
        """Where the reader is in every partition."""
        return {tp: await self._consumer.position(tp) for tp in self.partitions}

    async def read(
        self, start: Positions, stop: Positions | None, timeout_s: float
    ) -> list[events_pb2.Prediction]:
        """Predictions from `start` up to `stop`, or (stop None) whatever arrives
        within `timeout_s`."""
        consumer = self._consumer
        for tp in self.partitions:
            consumer.seek(tp, start.get(tp, 0))
        out: list[events_pb2.Prediction] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if stop is not None:
                at = await self.positions()
                if all(at[tp] >= stop.get(tp, 0) for tp in self.partitions):
                    break
            batches = await consumer.getmany(timeout_ms=200, max_records=10_000)
            for tp, records in batches.items():
                limit = stop.get(tp, 0) if stop is not None else None
                out.extend(
                    events_pb2.Prediction.FromString(record.value)
                    for record in records
                    if limit is None or record.offset < limit
                )
        else:
            if stop is not None:
                raise RuntimeError(f"predictions not read to their end in {timeout_s:.0f} s")
        return out


async def tally(settings: Settings, start: Positions, stop: Positions, rollout_id: str) -> Tally:
    async with PredictionsTopic(settings) as topic:
        found = Tally()
        for prediction in await topic.read(start, stop, timeout_s=120):
            if not prediction.shadow:
                found.champion += 1
            elif prediction.rollout_id == rollout_id:
                found.shadows += 1
            else:
                found.other_shadows += 1
        return found


async def topic_ends(settings: Settings) -> Positions:
    async with PredictionsTopic(settings) as topic:
        return await topic.ends()


async def probe(settings: Settings, endpoint: str, payloads: list[bytes]) -> dict[str, set[str]]:
    """`PROBES` Predicts, each over a new connection, and the rollout ids of the
    shadow answers that followed each (by event id) on `predictions`."""
    token = uuid.uuid4().hex[:8]
    event_ids = [f"probe-{token}-{i}" for i in range(PROBES)]
    async with PredictionsTopic(settings) as topic:
        start = await topic.ends()
        for i, event_id in enumerate(event_ids):
            request = predictor_pb2.PredictRequest.FromString(payloads[i % len(payloads)])
            request.event_id = event_id
            async with grpc.aio.insecure_channel(endpoint, options=OWN_CONNECTION) as channel:
                stub = predictor_pb2_grpc.PredictorStub(channel)
                reply = await stub.Predict(request, timeout=CALL_TIMEOUT_S)
            if reply.model_version != CHAMPION_VERSION:
                raise RuntimeError(
                    f"Predict answered with v{reply.model_version}, not the champion "
                    f"v{CHAMPION_VERSION}: the candidate must never answer"
                )
        wanted = set(event_ids)
        answered: set[str] = set()
        shadows: dict[str, set[str]] = {event_id: set() for event_id in event_ids}
        # Read until every probe's own prediction is in, then a moment more for
        # the shadows, which go out after it through the same buffer.
        deadline = time.monotonic() + 30
        grace_until: float | None = None
        position = start
        while time.monotonic() < deadline and (
            grace_until is None or time.monotonic() < grace_until
        ):
            for prediction in await topic.read(position, None, timeout_s=0.3):
                if prediction.event_id not in wanted:
                    continue
                if prediction.shadow:
                    shadows[prediction.event_id].add(prediction.rollout_id)
                else:
                    answered.add(prediction.event_id)
            position = await topic.positions()
            if grace_until is None and answered == wanted:
                grace_until = time.monotonic() + SHADOW_GRACE_S
        if answered != wanted:
            raise RuntimeError(
                f"{len(wanted - answered)} of {PROBES} probe predictions never reached "
                f"{Topics.PREDICTIONS} in 30 s"
            )
        return shadows


async def wait_shadowing(
    settings: Settings,
    endpoint: str,
    payloads: list[bytes],
    rollout_id: str,
    metrics_port: int,
    *,
    on: bool,
) -> float:
    """Until every probe is shadowed by `rollout_id` (on) or none by anything
    (off); the seconds it took. A failed candidate load ends the wait at once."""
    started = time.monotonic()
    failures = scrape(metrics_port).get("shadow_load_failures", 0.0)
    while True:
        shadows = await probe(settings, endpoint, payloads)
        if on and all(rollout_id in found for found in shadows.values()):
            return time.monotonic() - started
        if not on and not any(shadows.values()):
            return time.monotonic() - started
        if on and scrape(metrics_port).get("shadow_load_failures", 0.0) > failures:
            raise RuntimeError(
                f"inference could not load v{CANDIDATE_VERSION} for rollout {rollout_id} "
                "(driftloop_inference_shadow_load_failures_total rose): the rollout never "
                "took effect"
            )
        if time.monotonic() - started > LOAD_TIMEOUT_S:
            shadowed = sum(1 for found in shadows.values() if rollout_id in found)
            raise RuntimeError(
                f"rollout {rollout_id} {'open' if on else 'closed'} for {LOAD_TIMEOUT_S:.0f} s, "
                f"yet {shadowed} of {PROBES} probes were shadowed"
                + (": the rollout never took effect" if on else "")
            )
        await asyncio.sleep(1.0)


# ------------------------------------------------------------------ metrics


COUNTERS = {
    "driftloop_inference_shadow_predictions_total": "shadow_predictions",
    "driftloop_inference_shadow_load_failures_total": "shadow_load_failures",
}
DROP_REASONS = ("shadow_busy", "shadow_failed", "buffer_full")


def scrape(port: int) -> dict[str, float]:
    """The first inference process's shadow counters (the only one serving
    /metrics), summed over their labels; {} when it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
    except OSError:
        return {}
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in COUNTERS:
                key = COUNTERS[sample.name]
                found[key] = found.get(key, 0.0) + sample.value
            elif sample.name == "driftloop_inference_predictions_dropped_total":
                reason = sample.labels.get("reason", "")
                if reason in DROP_REASONS:
                    found[reason] = found.get(reason, 0.0) + sample.value
    return found


# ------------------------------------------------------------------- phases


@dataclass
class Phase:
    """One pass over every concurrency, with the rollout off or on."""

    mode: Mode
    # 1-based; an off phase carries the round of the on phase after it.
    round: int
    rollout_id: str
    cells: list[Cell]
    tally: Tally
    # The first inference process's counters, this phase's increase.
    first_process: dict[str, float] = field(default_factory=dict)
    # Seconds from the rollout event until probes showed the wanted state.
    settle_s: float = 0.0


def run_phase(
    mode: Mode,
    round_: int,
    rollout_id: str,
    settle_s: float,
    settings: Settings,
    endpoint: str,
    payloads: list[bytes],
    options: Options,
    pool: concurrent.futures.ProcessPoolExecutor | None,
    metrics_port: int,
) -> Phase:
    console.print(
        f"[bold]rollout {mode}[/] ({'round ' + str(round_) if mode == 'on' else 'reference'})"
        f"{f', shadows within {settle_s:.1f} s' if mode == 'on' else ''}"
    )
    before = scrape(metrics_port)
    start = asyncio.run(topic_ends(settings))
    cells = measure("predict", endpoint, payloads, options, pool)
    time.sleep(DRAIN_S)
    stop = asyncio.run(topic_ends(settings))
    after = scrape(metrics_port)
    counted = asyncio.run(tally(settings, start, stop, rollout_id))
    console.print(
        f"  on {Topics.PREDICTIONS}: {counted.champion:,} champion answers, "
        f"{counted.shadows:,} shadow answers"
        + (f", {counted.other_shadows:,} of other rollouts" if counted.other_shadows else "")
    )
    delta = {key: after.get(key, 0.0) - before.get(key, 0.0) for key in after}
    return Phase(mode, round_, rollout_id, cells, counted, delta, settle_s)


# ------------------------------------------------------------------- report


@dataclass(frozen=True)
class Overhead:
    """One on phase against the mean of the off phases either side of it."""

    round: int
    concurrency: int
    off_requests_per_s: float
    on_requests_per_s: float
    off_p50_ms: float
    on_p50_ms: float
    off_p99_ms: float
    on_p99_ms: float
    # Counted over the whole on phase (every concurrency), not this cell alone.
    phase_shadow_answers: int
    phase_champion_answers: int
    phase_shadow_busy_first_process: int

    @property
    def added_p50_ms(self) -> float:
        return self.on_p50_ms - self.off_p50_ms

    @property
    def added_p99_ms(self) -> float:
        return self.on_p99_ms - self.off_p99_ms

    def figures(self) -> dict[str, Any]:
        return asdict(self) | {
            "added_p50_ms": round(self.added_p50_ms, 3),
            "added_p99_ms": round(self.added_p99_ms, 3),
            "requests_per_s_ratio": _ratio(self.on_requests_per_s, self.off_requests_per_s),
            "p50_ratio": _ratio(self.on_p50_ms, self.off_p50_ms),
            "p99_ratio": _ratio(self.on_p99_ms, self.off_p99_ms),
        }


def _ratio(on: float, off: float) -> float:
    return round(on / off, 3) if off > 0 else float("nan")


def overheads(phases: list[Phase]) -> list[Overhead]:
    rows = []
    for index, phase in enumerate(phases):
        if phase.mode != "on":
            continue
        neighbours = [p for p in (phases[index - 1], phases[index + 1]) if p.mode == "off"]
        for cell in phase.cells:
            refs = [c for p in neighbours for c in p.cells if c.concurrency == cell.concurrency]
            rows.append(
                Overhead(
                    round=phase.round,
                    concurrency=cell.concurrency,
                    off_requests_per_s=statistics.fmean(c.requests_per_s for c in refs),
                    on_requests_per_s=cell.requests_per_s,
                    off_p50_ms=statistics.fmean(c.p50_ms for c in refs),
                    on_p50_ms=cell.p50_ms,
                    off_p99_ms=statistics.fmean(c.p99_ms for c in refs),
                    on_p99_ms=cell.p99_ms,
                    phase_shadow_answers=phase.tally.shadows,
                    phase_champion_answers=phase.tally.champion,
                    phase_shadow_busy_first_process=int(phase.first_process.get("shadow_busy", 0)),
                )
            )
    return sorted(rows, key=lambda row: (row.concurrency, row.round))


def report(phases: list[Phase], options: Options) -> tuple[dict[str, Any], bool]:
    """Print both tables; the figures for --json and whether every on phase
    was shadowed."""
    table = Table(title="Predict (enriched) by phase, python grpc.aio client")
    columns = ("phase", "c", "requests/s", "p50 ms", "p99 ms", "errors", "shadow / champion")
    for column in columns:
        table.add_column(column, justify="left" if column == "phase" else "right")
    for phase in phases:
        label = f"{phase.mode} {phase.round}" if phase.mode == "on" else "off"
        # Counted on the topic over the whole phase (every concurrency, warm-ups included).
        answers = phase.tally.shadows + phase.tally.other_shadows
        for n, cell in enumerate(phase.cells):
            table.add_row(
                label if n == 0 else "",
                str(cell.concurrency),
                f"{cell.requests_per_s:,.0f}",
                f"{cell.p50_ms:.2f}",
                f"{cell.p99_ms:.2f}",
                str(cell.errors),
                f"{answers:,} / {phase.tally.champion:,}" if n == 0 else "",
                end_section=n == len(phase.cells) - 1,
            )
    console.print(table)

    rows = overheads(phases)
    table = Table(
        title="Shadow scoring's cost to the champion's Predict: each on phase against the "
        "mean of the off phases either side"
    )
    for column in ("c", "round", "figure", "off", "on", "on - off", "on / off"):
        table.add_column(column, justify="left" if column == "figure" else "right")
    for row in rows:
        figures = row.figures()
        lines = (
            ("requests/s", row.off_requests_per_s, row.on_requests_per_s, ",.0f", ""),
            ("p50 ms", row.off_p50_ms, row.on_p50_ms, ".2f", "p50"),
            ("p99 ms", row.off_p99_ms, row.on_p99_ms, ".2f", "p99"),
        )
        for n, (name, off, on, shape, key) in enumerate(lines):
            ratio = figures[f"{key}_ratio" if key else "requests_per_s_ratio"]
            table.add_row(
                str(row.concurrency) if n == 0 else "",
                str(row.round) if n == 0 else "",
                name,
                format(off, shape),
                format(on, shape),
                format(on - off, "+" + shape),
                f"{ratio:.2f}",
                end_section=n == len(lines) - 1,
            )
    console.print(table)

    worst: dict[str, Any] = {}
    for concurrency in options.concurrency:
        mine = [row for row in rows if row.concurrency == concurrency]
        if mine:
            worst[str(concurrency)] = {
                "added_p50_ms": round(max(row.added_p50_ms for row in mine), 3),
                "added_p99_ms": round(max(row.added_p99_ms for row in mine), 3),
            }
            console.print(
                f"c{concurrency}: at most {worst[str(concurrency)]['added_p50_ms']:+.2f} ms at "
                f"p50 and {worst[str(concurrency)]['added_p99_ms']:+.2f} ms at p99 over "
                f"{len(mine)} round(s)"
            )
    on_phases = [p for p in phases if p.mode == "on"]
    shadowed = all(p.tally.shadows > 0 for p in on_phases) and bool(on_phases)
    for phase in on_phases:
        first = phase.first_process
        share = phase.tally.shadows / phase.tally.champion if phase.tally.champion else 0.0
        console.print(
            f"round {phase.round}: {phase.tally.shadows:,} shadow answers for "
            f"{phase.tally.champion:,} champion answers ({share:.0%}) on "
            f"{Topics.PREDICTIONS}; first inference process: "
            f"{int(first.get('shadow_predictions', 0)):,} published, "
            f"{int(first.get('shadow_busy', 0)):,} skipped busy, "
            f"{int(first.get('shadow_failed', 0)):,} failed, "
            f"{int(first.get('buffer_full', 0)):,} predictions dropped (buffer full)"
        )
        if phase.tally.shadows == 0:
            console.print(
                f"[red]round {phase.round}: no shadow answer was published while rollout "
                f"{phase.rollout_id} was open: the rollout never took effect[/]"
            )
    stray = sum(p.tally.shadows + p.tally.other_shadows for p in phases if p.mode == "off")
    if stray:
        console.print(f"[yellow]{stray:,} shadow answers were published during off phases[/]")
    sampler = os.environ.get("OTEL_TRACES_SAMPLER", "parentbased_always_on (every call traced)")
    console.print(
        f"python grpc.aio client, {options.client_processes} process(es), "
        f"{options.connections} connection(s); Driftloop inference: {inference_workers()} "
        f"process(es) sharing the port; {options.warmup:g} s warm-up, {options.seconds:g} s "
        f"per cell; tracing sampler: {sampler}; {os.cpu_count()} CPUs shared by all "
        f"(load average now {os.getloadavg()[0]:.1f})"
    )
    for phase in phases:
        for cell in phase.cells:
            if cell.errors:
                console.print(f"[red]{phase.mode} c={cell.concurrency}: {cell.first_error}[/]")
    figures = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_1m_at_end": os.getloadavg()[0],
        },
        "options": {
            "seconds": options.seconds,
            "warmup": options.warmup,
            "concurrency": list(options.concurrency),
            "client_processes": options.client_processes,
            "connections": options.connections,
            "inference_workers": inference_workers(),
            "model": {"kind": "HistGradientBoostingClassifier", **PARAMS},
            "tracing_sampler": sampler,
        },
        "phases": [
            {
                "mode": p.mode,
                "round": p.round,
                "rollout_id": p.rollout_id,
                "settle_s": round(p.settle_s, 2),
                "champion_answers": p.tally.champion,
                "shadow_answers": p.tally.shadows,
                "other_shadow_answers": p.tally.other_shadows,
                "first_process_counters": p.first_process,
                "cells": [asdict(c) for c in p.cells],
            }
            for p in phases
        ],
        "overhead": [row.figures() for row in rows],
        "worst_added_ms": worst,
        "shadowed": shadowed,
    }
    return figures, shadowed


# --------------------------------------------------------------------- run


def bench(options: Options, rounds: int, pool: Any) -> list[Phase]:
    featureset_path = default_featureset_path()
    featureset = load_featureset(featureset_path)
    console.print("fitting and exporting v1 (champion) and v2 (candidate) with the trainer's code")
    rows = make_rows()
    champion, champion_onnx = fit_driftloop_model(rows, featureset)
    candidate, candidate_onnx = fit_candidate(champion_onnx, featureset)
    home = options.home / "driftloop"
    home.mkdir(parents=True, exist_ok=True)
    env, settings = private_stack(home, featureset_path)
    # The registry's gate keeps v2 a candidate, and opens no rollout of its own:
    # this script opens and closes them.
    env["DRIFTLOOP_REGISTRY_ROLLOUT"] = "off"
    env["DRIFTLOOP_REGISTRY_MIN_IMPROVEMENT"] = UNREACHABLE_MARGIN
    metrics_port = int(json.loads(env["DRIFTLOOP_ENDPOINTS__METRICS"])["inference"])
    log_path = options.home / "driftloop-up.log"
    argv = [sys.executable, "-m", "driftloop_cli", "up", "--only"]
    argv.append("registry,features,ingestion,inference")
    with process(argv, log_path, env=env) as child:

        async def setup() -> common_pb2.Artifact:
            for name in ("registry", "features", "ingestion"):
                await wait_serving(getattr(settings.endpoints, name), name, timeout_s=120)
            await announce_model(settings, champion, champion_onnx)
            await wait_model_ready(
                settings.endpoints.inference, child, log_path, "inference", timeout_s=120
            )
            await announce_model(settings, candidate, candidate_onnx)
            artifact = await registered_candidate(settings)
            await ingest_enrichment_events(settings, rows, ENRICHMENT_EVENTS)
            return artifact

        console.print("  driftloop up --only registry,features,ingestion,inference")
        artifact = asyncio.run(setup())
        endpoint = settings.endpoints.inference
        console.print(f"  champion v1 served on {endpoint}; {ENRICHMENT_EVENTS} events ingested")
        payloads = predict_requests(rows, min(REQUEST_POOL, ENRICHMENT_EVENTS))
        asyncio.run(check_enrichment(endpoint, payloads))

        def phase(mode: Mode, round_: int, rollout_id: str, settle_s: float = 0.0) -> Phase:
            return run_phase(
                mode,
                round_,
                rollout_id,
                settle_s,
                settings,
                endpoint,
                payloads,
                options,
                pool,
                metrics_port,
            )

        def settle(rollout_id: str, on: bool) -> float:
            return asyncio.run(
                wait_shadowing(settings, endpoint, payloads, rollout_id, metrics_port, on=on)
            )

        phases = [phase("off", 1, "")]
        for round_ in range(1, rounds + 1):
            rollout_id = f"shadow-bench-{uuid.uuid4().hex[:8]}"
            asyncio.run(publish_rollout(settings, rollout_id, artifact))
            phases.append(phase("on", round_, rollout_id, settle(rollout_id, on=True)))
            asyncio.run(publish_rollout(settings, rollout_id, None))
            settled = settle(rollout_id, on=False)
            console.print(f"  rollout {rollout_id} closed; no shadows within {settled:.1f} s")
            phases.append(phase("off", round_ + 1, ""))
        return phases


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measuring window per cell")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up per cell, seconds")
    parser.add_argument(
        "--concurrency", default="1,16", help="comma-separated Predict loops in flight"
    )
    parser.add_argument(
        "--rounds", type=int, default=2, help="on phases, each between two off phases"
    )
    parser.add_argument(
        "--client-processes",
        type=int,
        default=2,
        help="spread the request loops over this many client processes",
    )
    parser.add_argument(
        "--connections",
        type=int,
        default=8,
        help="client connections in all (at least one per process, at most one per loop)",
    )
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    concurrency = checked_timing(args)
    if args.rounds < 1:
        raise SystemExit(f"--rounds: must be >= 1, got {args.rounds}")
    if args.client_processes < 1 or args.connections < 1:
        raise SystemExit("--client-processes and --connections: must be >= 1")
    home = Path(tempfile.mkdtemp(prefix="driftloop-shadow-bench-"))
    options = Options(
        seconds=args.seconds,
        warmup=args.warmup,
        concurrency=concurrency,
        client_processes=args.client_processes,
        connections=args.connections,
        h2load=False,
        mlserver_venv=home,  # unused: no MLServer here
        home=home,
    )
    pool = (
        concurrent.futures.ProcessPoolExecutor(
            args.client_processes, mp_context=multiprocessing.get_context("spawn")
        )
        if args.client_processes > 1
        else None
    )
    try:
        if pool is not None:
            # Spawn every client process now: importing the benchmark takes seconds.
            started = set(pool.map(_started, range(args.client_processes)))
            if len(started) != args.client_processes:
                raise RuntimeError(f"{len(started)} of {args.client_processes} clients started")
        phases = bench(options, args.rounds, pool)
    except RuntimeError as error:
        console.print(f"[red]{error}[/]")
        return 1
    finally:
        if pool is not None:
            pool.shutdown()
        if args.keep:
            console.print(f"logs and state kept in {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)
    figures, shadowed = report(phases, options)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
        console.print(f"figures written to {args.json}")
    failed = any(cell.errors for phase in phases for cell in phase.cells)
    return 1 if failed or not shadowed else 0


if __name__ == "__main__":
    sys.exit(main())
