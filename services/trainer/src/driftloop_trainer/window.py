"""A training set that holds its whole window, or a run that says what was missing.

Drift counts labels as they reach it on Kafka; the feature store writes the same
rows to the offline log later (its consumer's lag, its flushes). A request that
states how many labelled rows its requester counted in the window is trained
only once the training set holds them all: the set is asked for again, with
backoff, for at most `WindowWait.timeout_s`, and the run fails at `load_data`
naming the counts and the wait. A request with no count (0: a manual run, an
older requester) trains on what is there, as before.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from driftloop.v1 import common_pb2, events_pb2
from driftloop_core.logging import get_logger

from driftloop_trainer.ports import TrainingSet, TrainingSetSource
from driftloop_trainer.training import TrainingError

log = get_logger(__name__)


@dataclass(frozen=True)
class WindowWait:
    """How long a run waits for the offline log to hold its window, and how often it asks."""

    timeout_s: float = 120.0
    first_delay_s: float = 1.0
    max_delay_s: float = 15.0


async def complete_training_set(
    source: TrainingSetSource,
    request: events_pb2.TrainingRequested,
    wait: WindowWait,
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    monotonic: Callable[[], float] = time.monotonic,
) -> TrainingSet:
    """The training set of `request`'s window once it holds the labelled rows the
    requester counted; raises `TrainingError` at `load_data` when it never does."""
    expected = request.expected_labelled_rows
    started = monotonic()
    training_set = await source.training_set(request.model, request.window)
    delay = wait.first_delay_s
    while training_set.dataset.row_count < expected:
        held = training_set.dataset.row_count
        waited = monotonic() - started
        if waited >= wait.timeout_s:
            raise TrainingError(
                "load_data",
                f"the offline log held {held} of the {expected} labelled rows counted "
                f"{describe_window(request.window)}: waited {round(waited, 1):g} s",
            )
        log.info(
            "window_incomplete",
            model=request.model,
            held=held,
            expected=expected,
            waited_s=round(waited, 1),
        )
        await sleep(min(delay, wait.timeout_s - waited))
        delay = min(delay * 2, wait.max_delay_s)
        training_set = await source.training_set(request.model, request.window)
    return training_set


def describe_window(window: common_pb2.DataWindow) -> str:
    """The window in words, for a failure reason."""
    kind = window.WhichOneof("kind")
    if kind == "time_range":
        span = window.time_range
        text = f"since {span.start.ToJsonString()}"
        if span.HasField("end"):
            text += f" (to {span.end.ToJsonString()})"
        return text
    if kind == "last_n":
        return f"in the last {window.last_n}"
    return "in the whole log"
