"""One training run, stage by stage, from a `TrainingRequested` to a `ModelTrained`.

Transport-neutral: the training set, the champion and the artifact store come in
through small interfaces, so the Kafka consumer, the tests and a one-off script
run the same code. Each stage is a span and a log event with its duration, and a
failure names its stage, which is what `TrainingFailed.stage` reports.
CPU-bound stages run in a worker thread so the event loop keeps heartbeating.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from typing import TypeVar

import numpy as np
import pyarrow as pa
from driftloop.v1 import common_pb2, events_pb2
from driftloop_core.artifacts import ArtifactDigestError, ArtifactStore
from driftloop_core.featureset import FeatureSet
from driftloop_core.kafka import Stopped
from driftloop_core.logging import get_logger
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode
from threadpoolctl import threadpool_limits

from driftloop_trainer.metrics import STAGE_SECONDS
from driftloop_trainer.onnx_model import (
    OnnxClassifier,
    check_parity,
    export_onnx,
    reference_distributions,
    signature_of,
)
from driftloop_trainer.ports import ChampionSource, SourceError, TrainingSetSource
from driftloop_trainer.training import (
    TrainingConfig,
    TrainingData,
    TrainingError,
    classification_metrics,
    fit_best,
    load_training_data,
    positive_probability,
    search,
    time_split,
)
from driftloop_trainer.window import WindowWait, complete_training_set

log = get_logger(__name__)
tracer = trace.get_tracer("driftloop.trainer")

STAGES = (
    "load_data",
    "search",
    "fit",
    "evaluate",
    "export",
    "parity",
    "champion_eval",
    "store",
)

# What a failing library call inside a stage may raise; anything else is a bug
# and propagates to the consumer, which dead-letters the request.
_STAGE_ERRORS = (
    SourceError,
    ValueError,
    ArithmeticError,
    OSError,
    KeyError,
    RuntimeError,
    TypeError,
    pa.ArrowException,
    ArtifactDigestError,
)

T = TypeVar("T")


def code_version() -> str:
    try:
        return f"driftloop-trainer {version('driftloop-trainer')}"
    except PackageNotFoundError:
        return "driftloop-trainer unknown"


@contextmanager
def stage(name: str, **attributes: str | int) -> Iterator[trace.Span]:
    """A span and a `stage_finished` (or `stage_failed`) log event with the duration."""
    started = time.perf_counter()
    with tracer.start_as_current_span(
        f"trainer.{name}", attributes={"driftloop.trainer.stage": name, **attributes}
    ) as span:
        try:
            yield span
        except TrainingError as error:
            span.set_status(Status(StatusCode.ERROR, error.reason))
            STAGE_SECONDS.labels(name, "failed").observe(time.perf_counter() - started)
            log.warning(
                "stage_failed",
                stage=name,
                reason=error.reason,
                duration_s=round(time.perf_counter() - started, 4),
            )
            raise
        except _STAGE_ERRORS as error:
            reason = f"{type(error).__name__}: {error}"[:500]
            span.set_status(Status(StatusCode.ERROR, reason))
            STAGE_SECONDS.labels(name, "failed").observe(time.perf_counter() - started)
            log.warning(
                "stage_failed",
                stage=name,
                reason=reason,
                duration_s=round(time.perf_counter() - started, 4),
            )
            raise TrainingError(name, reason) from error
        elapsed = time.perf_counter() - started
        STAGE_SECONDS.labels(name, "ok").observe(elapsed)
        log.info("stage_finished", stage=name, duration_s=round(elapsed, 4))


async def in_thread(threads: int, function: Callable[[], T]) -> T:
    """Run a CPU-bound stage in a worker thread with at most `threads` OpenMP threads
    (the limit is per thread, so it is set in the worker). to_thread copies the
    context, so spans opened in the thread nest under ours."""

    def limited() -> T:
        with threadpool_limits(limits=threads, user_api="openmp"):
            return function()

    return await asyncio.to_thread(limited)


@dataclass
class TrainingRunner:
    """Runs one request to a `ModelTrained`, or raises `TrainingError` naming the stage."""

    featureset: FeatureSet
    training_sets: TrainingSetSource
    champions: ChampionSource
    artifacts: ArtifactStore
    config: TrainingConfig = field(default_factory=TrainingConfig)
    window_wait: WindowWait = field(default_factory=WindowWait)
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    # Set when the service stops: a run waiting for its window gives up at
    # once (`Stopped`), and its request stays uncommitted for the next start.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)
        if self.stopping.is_set():
            raise Stopped("waiting for the training window")

    async def run(self, request: events_pb2.TrainingRequested) -> events_pb2.ModelTrained:
        fs = self.featureset
        config = self.config
        with stage("load_data", model=request.model):
            if request.model != fs.name:
                raise TrainingError(
                    "load_data", f"this trainer serves model {fs.name!r}, not {request.model!r}"
                )
            training_set = await complete_training_set(
                self.training_sets, request, self.window_wait, sleep=self._pause
            )
            data = await in_thread(
                config.threads, lambda: load_training_data(training_set.path, fs)
            )
            split = time_split(data, config)
        with stage("search", candidates=len(config.search_space())):
            params, results = await in_thread(config.threads, lambda: search(split, fs, config))
        with stage("fit"):
            pipeline, fitted_on = await in_thread(
                config.threads, lambda: fit_best(split, fs, config, params)
            )
        evaluation = split.test
        with stage("evaluate", rows=len(evaluation)):
            probabilities = await in_thread(
                config.threads, lambda: positive_probability(pipeline, evaluation)
            )
            metrics = classification_metrics(evaluation.labels, probabilities)
        with stage("export"):
            onnx_bytes = await in_thread(
                config.threads, lambda: export_onnx(pipeline, fs, request.model)
            )
            signature = signature_of(onnx_bytes)
            reference = await in_thread(
                config.threads, lambda: reference_distributions(fitted_on, fs)
            )
        with stage("parity") as span:
            diff = await in_thread(
                config.threads, lambda: check_parity(onnx_bytes, probabilities, evaluation)
            )
            span.set_attribute("driftloop.trainer.parity_max_abs_diff", diff)
        with stage("champion_eval"):
            lookup = await self.champions.champion(request.model)
            champion_metrics: dict[str, float] = {}
            champion_note = lookup.note or "no champion"
            if lookup.champion is not None:
                champion = lookup.champion
                try:
                    champion_probs = await in_thread(
                        config.threads,
                        lambda: OnnxClassifier(champion.onnx_bytes).positive_probability(
                            evaluation
                        ),
                    )
                except KeyError as error:
                    # The champion takes inputs this feature set no longer has:
                    # it cannot be scored on these rows, so there is nothing to compare.
                    champion_note = f"champion v{champion.version} not comparable: {error}"
                else:
                    champion_metrics = classification_metrics(evaluation.labels, champion_probs)
                    champion_note = f"champion v{champion.version} evaluated"
            log.info("champion_evaluated", model=request.model, note=champion_note)
        with stage("store"):
            artifact = await in_thread(config.threads, lambda: self.artifacts.put(onnx_bytes))

        trained = events_pb2.ModelTrained(
            request_id=request.request_id,
            model=request.model,
            artifact=artifact,
            signature=signature,
            metrics=metrics,
            champion_metrics=champion_metrics,
            eval_rows=len(evaluation),
            eval_range=_time_range(evaluation),
            dataset=training_set.dataset,
            params={
                "algorithm": config.algorithm,
                "random_state": str(config.random_state),
                "split": f"{config.train_fraction}/{config.validation_fraction}/rest by event_time",
                "search.candidates": str(len(results)),
                "search.metric": "validation log_loss",
                "search.results": "; ".join(
                    f"{_params_text(r.params)} -> {r.validation_metrics['log_loss']:.4f}"
                    for r in results
                ),
                "fit_rows": str(len(fitted_on)),
                "parity_max_abs_diff": f"{diff:.3g}",
                "champion": champion_note,
                **{f"param.{key}": str(value) for key, value in sorted(params.items())},
            },
            code_version=code_version(),
            reference=reference,
            feature_names=list(fs.model.features),
            algorithm=config.algorithm,
            trigger=request.trigger,
            parent_drift_id=request.parent_drift_id,
        )
        if lookup.champion is not None and champion_metrics:
            trained.champion_version = lookup.champion.version
        trained.trained_at.FromDatetime(self.clock())
        return trained


def _params_text(params: dict[str, object]) -> str:
    return ",".join(f"{key}={value}" for key, value in sorted(params.items()))


def _time_range(data: TrainingData) -> common_pb2.TimeRange:
    out = common_pb2.TimeRange()
    if len(data):
        out.start.FromMilliseconds(int(np.min(data.event_time_ms)))
        out.end.FromMilliseconds(int(np.max(data.event_time_ms)) + 1)
    return out
