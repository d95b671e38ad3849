"""What every service's `__main__` shares: telemetry and its feature set, and
serving until a signal."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable, Collection, Coroutine
from typing import Any

import structlog

from driftloop_core.featureset import (
    FeatureSet,
    FeatureSetError,
    default_featureset_path,
    load_featureset,
)
from driftloop_core.settings import Settings
from driftloop_core.telemetry import init_telemetry, serve_metrics

log = structlog.get_logger(__name__)


def featureset_for(settings: Settings) -> FeatureSet:
    """The feature set named by `DRIFTLOOP_FEATURESET`, else the built-in payments set."""
    return load_featureset(settings.featureset or default_featureset_path())


def featureset_or_none(settings: Settings) -> FeatureSet | None:
    """The feature set, or None once every problem with it is logged (by file,
    key and rule): the service then exits 2, as for any invalid setting."""
    try:
        return featureset_for(settings)
    except FeatureSetError as error:
        log.error("featureset_invalid", path=error.path, problems=error.problems)
        return None


def run_service(
    settings: Settings,
    serve: Callable[[], Coroutine[Any, Any, int | None]],
    *,
    metrics: bool = True,
) -> int:
    """A service's `main`: telemetry, /metrics (unless another process of the
    service serves them), then `serve()` to its end; its result is the exit
    code (None: 0). Telemetry is flushed on the way out, whatever happens."""
    telemetry = init_telemetry(settings)
    if metrics:
        serve_metrics(settings)
    try:
        return asyncio.run(serve()) or 0
    finally:
        telemetry.shutdown()


def run_with_featureset(
    settings: Settings,
    serve: Callable[[FeatureSet], Coroutine[Any, Any, int | None]],
    *,
    metrics: bool = True,
) -> int:
    """`run_service` for a service that needs the feature set: it exits 2 when
    the feature set is invalid, else `serve(featureset)` runs."""

    async def with_featureset() -> int | None:
        featureset = featureset_or_none(settings)
        if featureset is None:
            return 2
        return await serve(featureset)

    return run_service(settings, with_featureset, metrics=metrics)


async def serve_until_signal(
    name: str,
    start: Callable[[], Awaitable[None]],
    stop: Callable[[], Awaitable[None]],
    tasks: Callable[[], Collection[asyncio.Task[Any]]],
    errors: tuple[type[BaseException], ...],
) -> int:
    """Start a service, serve until SIGTERM/SIGINT, stop it; return the exit code.

    0 after a signal and a clean stop. 1 when it cannot start (broker down, port
    taken), when one of its background `tasks` ends on its own (a consumer that
    cannot go on), or when stopping fails: the supervisor then restarts the
    process, and whatever was not committed is read again. `errors` are the
    failures that mean "restart me"; anything else is a bug and propagates.
    """
    try:
        await start()
    except errors as error:
        log.error(name + "_start_failed", error=repr(error))
        with contextlib.suppress(*errors):
            await stop()
        return 1
    loop = asyncio.get_running_loop()
    signalled = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, signalled.set)
    waiter = asyncio.create_task(signalled.wait())
    try:
        await asyncio.wait([waiter, *tasks()], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        waiter.cancel()
    if signalled.is_set():
        log.info(name + "_signal_received")
    try:
        await stop()
    except errors as error:
        log.error(name + "_failed", error=repr(error), exc_info=error)
        return 1
    return 0 if signalled.is_set() else 1
