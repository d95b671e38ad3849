"""Dynamic batching: concurrent requests merged into one onnxruntime run.

Requests for the same loaded model wait in one bounded queue. A single runner
takes the first request, waits at most `max_queue_delay_us` for more (0: it
takes only what is already queued), stacks up to `max_batch_size` rows along
axis 0, runs the session and hands each request its own slice of every output.

Where a run happens depends on how long runs take. While a model's runs take
at most `inline_run_us` (timed at load for the largest batch, then a moving
average of the runs served), they happen on the event loop itself: a hand-off
to a worker thread and back costs more than such a run, and on a busy machine
the worker may wait a whole scheduler time slice for a core. Slower models run
in a worker thread, and while one batch runs there the next one gathers by itself.

Large requests have a thread of their own: a request of more rows than a batch
runs there, and so does the whole of a large ModelInfer (decode, run, encode:
`offload`), one at a time. A large request so never holds the event loop or the
batches' thread, and only the one running has its tensors decoded.

A full queue refuses at once (`Overloaded`). A request
whose caller went away (its future cancelled by a deadline or a cancel) or whose
deadline has passed by the time its batch forms is dropped before the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import structlog

from driftloop_inference.errors import DeadlineExpired, Overloaded
from driftloop_inference.metrics import BATCH_SIZE, QUEUE_SECONDS, REJECTED
from driftloop_inference.model import Array, ServedModel

log = structlog.get_logger(__name__)
Result = TypeVar("Result")


class _Item:
    __slots__ = ("deadline", "enqueued", "feeds", "future", "key", "model", "rows")

    def __init__(
        self,
        model: ServedModel,
        feeds: dict[str, Array],
        rows: int,
        future: asyncio.Future[list[Array]],
        deadline: float | None,
        key: Any,
    ) -> None:
        self.model = model
        self.feeds = feeds
        self.rows = rows
        self.future = future
        self.deadline = deadline
        self.enqueued = time.perf_counter()
        self.key = key


# Weight of the latest run in a model's moving average run time: one run far
# slower than the load-time estimate moves the model off the event loop at once,
# and a few quick ones bring it back (a stall from a busy machine is transient).
_SMOOTHING = 0.25


def _timed_run(model: ServedModel, feeds: dict[str, Array]) -> list[Array]:
    """Run and fold the run's duration into `model.run_seconds`."""
    started = time.perf_counter()
    outputs = model.run(feeds)
    model.run_seconds += _SMOOTHING * (time.perf_counter() - started - model.run_seconds)
    return outputs


# How much nicer than the rest of the process the large requests' thread runs:
# with the cores busy, the event loop and the batches get about ten times its
# share of CPU time (Linux's weights for nice 0 and 10), and a large request
# takes only what they leave.
_LARGE_NICENESS = 10


def _lower_priority() -> None:
    """Make the calling thread nicer (Linux: the niceness of one thread)."""
    if not sys.platform.startswith("linux"):
        return
    tid = threading.get_native_id()
    # A thread that may not change its niceness (a sandbox) still runs, as it is.
    with contextlib.suppress(OSError):
        niceness = os.getpriority(os.PRIO_PROCESS, tid) + _LARGE_NICENESS
        os.setpriority(os.PRIO_PROCESS, tid, min(niceness, 19))


def _unless_expired(job: Callable[[], Result], deadline: float | None) -> Result:
    """`job`, unless `deadline` passed while it waited for the thread."""
    if deadline is not None and deadline <= time.monotonic():
        REJECTED.labels("deadline").inc()
        raise DeadlineExpired("deadline exceeded while queued")
    return job()


def _tail_key(model: ServedModel, feeds: dict[str, Array]) -> Any:
    """What must match for two requests to stack: the model and, when the model
    has variable non-batch dimensions, every input's trailing shape."""
    if model.fixed_tail:
        return model
    return (model, tuple(feeds[spec.name].shape[1:] for spec in model.inputs))


class Batcher:
    def __init__(
        self,
        *,
        enabled: bool,
        max_batch_size: int,
        max_queue_delay_us: int,
        capacity: int,
        inline_run_us: int = 1000,
    ) -> None:
        self.enabled = enabled
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_queue_delay_us / 1_000_000
        self.capacity = capacity
        self.inline_run_s = inline_run_us / 1_000_000
        self._queue: deque[_Item] = deque()
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnxruntime")
        self._large = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="onnxruntime-large", initializer=_lower_priority
        )
        self._runner: asyncio.Task[None] | None = None
        self._inflight = 0

    def start(self) -> None:
        if self._runner is None:
            self._runner = asyncio.get_running_loop().create_task(self._run(), name="batcher")

    async def stop(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
            self._runner = None
        while self._queue:
            item = self._queue.popleft()
            if not item.future.done():
                item.future.set_exception(Overloaded("the server is stopping"))
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._large.shutdown(wait=False, cancel_futures=True)

    @property
    def depth(self) -> int:
        return len(self._queue) + self._inflight

    async def infer(
        self, model: ServedModel, feeds: dict[str, Array], rows: int, deadline: float | None
    ) -> list[Array]:
        """Every output of `model` for `feeds` (`rows` rows), batched when possible.

        `deadline` is a `time.monotonic()` instant after which the result is useless.
        """
        self._admit()
        loop = asyncio.get_running_loop()
        if not (self.enabled and model.batchable and rows <= self.max_batch_size):
            executor = self._executor
            if rows > self.max_batch_size:
                # Larger than any batch: the large requests' thread, and not timed.
                run = model.run
                executor = self._large
            elif self._inline(model):
                return _timed_run(model, feeds)
            else:
                run = functools.partial(_timed_run, model)
            self._inflight += 1
            try:
                return await loop.run_in_executor(executor, run, feeds)
            finally:
                self._inflight -= 1
        future: asyncio.Future[list[Array]] = loop.create_future()
        self._queue.append(_Item(model, feeds, rows, future, deadline, _tail_key(model, feeds)))
        if not self._wake.is_set():
            self._wake.set()
        return await future

    async def offload(self, job: Callable[[], Result], deadline: float | None) -> Result:
        """The blocking `job` (a large request's whole work) in the large requests'
        thread, after those before it; DeadlineExpired when `deadline` (a
        `time.monotonic()` instant) has passed by the time its turn comes."""
        self._admit()
        self._inflight += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._large, _unless_expired, job, deadline
            )
        finally:
            self._inflight -= 1

    def _admit(self) -> None:
        if len(self._queue) + self._inflight >= self.capacity:
            REJECTED.labels("queue_full").inc()
            raise Overloaded(
                f"inference queue full ({self.capacity} requests waiting); retry later"
            )

    def _inline(self, model: ServedModel) -> bool:
        """True when a batch of this model is quick enough to run on the event loop."""
        return model.run_seconds <= self.inline_run_s

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        queue = self._queue
        while True:
            if not queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            if self.max_delay_s > 0:
                first = queue[0]
                rows = sum(item.rows for item in queue if item.key is first.key)
                remaining = first.enqueued + self.max_delay_s - time.perf_counter()
                if rows < self.max_batch_size and remaining > 0:
                    await asyncio.sleep(remaining)
            batch = self._take()
            if not batch:
                continue
            self._inflight += len(batch)
            try:
                await self._execute(loop, batch)
            finally:
                self._inflight -= len(batch)

    def _take(self) -> list[_Item]:
        """Queued requests that stack with the first one, up to the row limit."""
        queue = self._queue
        now_mono = time.monotonic()
        now = time.perf_counter()
        batch: list[_Item] = []
        rows = 0
        key: Any = None
        skipped: list[_Item] = []
        while queue:
            item = queue[0]
            if item.future.done():  # cancelled: the caller is gone
                queue.popleft()
                continue
            if item.deadline is not None and item.deadline <= now_mono:
                queue.popleft()
                REJECTED.labels("deadline").inc()
                item.future.set_exception(DeadlineExpired("deadline exceeded while queued"))
                continue
            if key is None:
                key = item.key
            elif item.key is not key and item.key != key:
                # Another model version or shape: keep it for the next batch.
                skipped.append(queue.popleft())
                if len(skipped) > self.max_batch_size:
                    break
                continue
            if rows + item.rows > self.max_batch_size and batch:
                break
            queue.popleft()
            batch.append(item)
            rows += item.rows
            QUEUE_SECONDS.observe(now - item.enqueued)
            if rows >= self.max_batch_size:
                break
        queue.extendleft(reversed(skipped))
        return batch

    async def _execute(self, loop: asyncio.AbstractEventLoop, batch: list[_Item]) -> None:
        model = batch[0].model
        try:
            if len(batch) == 1:
                feeds = batch[0].feeds
            else:
                feeds = {
                    spec.name: np.concatenate([item.feeds[spec.name] for item in batch])
                    for spec in model.inputs
                }
            total = sum(item.rows for item in batch)
            BATCH_SIZE.observe(total)
            if self._inline(model):
                outputs = _timed_run(model, feeds)
            else:
                outputs = await loop.run_in_executor(
                    self._executor, functools.partial(_timed_run, model), feeds
                )
        except Exception as error:  # noqa: BLE001 - every waiter gets the failure
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(error)
            return
        if len(batch) == 1:
            if not batch[0].future.done():
                batch[0].future.set_result(outputs)
            return
        for output in outputs:
            if output.ndim == 0 or output.shape[0] != total:
                mismatch = RuntimeError(
                    f"model {model.name} v{model.version}: an output's first dimension "
                    f"{output.shape[:1]} is not the batch of {total} rows"
                )
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(mismatch)
                return
        start = 0
        for item in batch:
            end = start + item.rows
            if not item.future.done():
                item.future.set_result([output[start:end] for output in outputs])
            start = end
